"""YOLOX-nano rebuilt in PyTorch, split into stages with early exits.

The architecture is Megvii's YOLOX-nano (depth 0.33, width 0.25, depthwise convolutions) written
out explicitly; the pretrained weights come from the initializers of perception/weights/yolox_nano.onnx,
whose BatchNorms are already folded into the convolutions (hence every conv here has a bias and
there is no BatchNorm).

Split (chosen from onnxruntime per-part timings, 1 thread, on a 2-core x86 CPU; full depth 14.0 ms):

    stage0  images -> dark3 [1,64,52,52], dark4 [1,128,26,26]     stem, dark2, dark3, dark4    5.9 ms
    exit0   dark3, dark4 -> output_exit0 [1,3549,85]               small distilled head         1.6 ms
    stage1  dark3, dark4 -> pan_s8, pan_s16, pan_s32               dark5 + PAFPN                5.2 ms
    exit1   pan_s8, pan_s16, pan_s32 -> output_exit1 [1,3549,85]  the original decoupled head  3.1 ms

The stem and dark2 alone (full resolution) take ~3.2 ms, so no exit can be much cheaper than
~40 %; dark4 costs only 1.1 ms and gives the shallow head stride-16 context, hence the split.

exit1 is the original network, bit for bit up to float rounding. Every exit emits YOLOX's raw
layout: (dx, dy, log w, log h, objectness, 80 class scores), obj and classes sigmoided, anchors
ordered stride 8, 16, 32, row-major.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
ORIGINAL_ONNX = WEIGHTS_DIR / "yolox_nano.onnx"
EXITS_NPZ = WEIGHTS_DIR / "yolox_nano_exits.npz"

NUM_CLASSES = 80
STRIDES = (8, 16, 32)
INPUT_SIZE = 416

# Tensor names shared by the PyTorch parts, the ONNX export and the manifest.
IMAGES = "images"
DARK3, DARK4 = "dark3", "dark4"
PAN_S8, PAN_S16, PAN_S32 = "pan_s8", "pan_s16", "pan_s32"
EXIT_OUTPUTS = ("output_exit0", "output_exit1")


# ----------------------------------------------------------------------------- building blocks

class BaseConv(nn.Module):
    """Conv (BatchNorm folded into weight and bias) followed by SiLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=True)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class DWConv(nn.Module):
    """Depthwise kxk conv then pointwise 1x1 conv, each with SiLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.dconv = BaseConv(cin, cin, kernel, stride, groups=cin)
        self.pconv = BaseConv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


class Bottleneck(nn.Module):
    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = BaseConv(channels, channels, 1)
        self.conv2 = DWConv(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.shortcut else y


class CSPLayer(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
        super().__init__()
        hidden = cout // 2
        self.conv1 = BaseConv(cin, hidden, 1)
        self.conv2 = BaseConv(cin, hidden, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, shortcut) for _ in range(n)])
        self.conv3 = BaseConv(2 * hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.conv2(x)
        return self.conv3(torch.cat((self.m(x1), x2), 1))


class SPPBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = cin // 2
        self.conv1 = BaseConv(cin, hidden, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernels)
        self.conv2 = BaseConv(hidden * (len(kernels) + 1), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.pools], 1))


class Focus(nn.Module):
    """Space-to-depth (2x2 pixels into channels) then a 3x3 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = BaseConv(cin * 4, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top_left, top_right = x[..., ::2, ::2], x[..., ::2, 1::2]
        bottom_left, bottom_right = x[..., 1::2, ::2], x[..., 1::2, 1::2]
        return self.conv(torch.cat((top_left, bottom_left, top_right, bottom_right), 1))


def flatten_levels(levels: list[torch.Tensor]) -> torch.Tensor:
    """Per-level [1,85,H,W] maps -> [1, sum(H*W), 85], levels in order, anchors row-major."""
    return torch.cat([level.flatten(2) for level in levels], 2).permute(0, 2, 1)


# ----------------------------------------------------------------------------- stages and exits

class Stage0(nn.Module):
    """Stem .. dark4: the features at strides 8 and 16."""

    input_names = (IMAGES,)
    output_names = (DARK3, DARK4)

    def __init__(self) -> None:
        super().__init__()
        self.stem = Focus(3, 16)
        self.dark2 = nn.Sequential(DWConv(16, 32, 3, 2), CSPLayer(32, 32, 1, shortcut=True))
        self.dark3 = nn.Sequential(DWConv(32, 64, 3, 2), CSPLayer(64, 64, 3, shortcut=True))
        self.dark4 = nn.Sequential(DWConv(64, 128, 3, 2), CSPLayer(128, 128, 3, shortcut=True))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dark3 = self.dark3(self.dark2(self.stem(images)))
        return dark3, self.dark4(dark3)


class Stage1(nn.Module):
    """Dark5 (with SPP) and the PAFPN neck: the head's inputs at strides 8, 16, 32."""

    input_names = (DARK3, DARK4)
    output_names = (PAN_S8, PAN_S16, PAN_S32)

    def __init__(self) -> None:
        super().__init__()
        self.dark5 = nn.Sequential(DWConv(128, 256, 3, 2), SPPBottleneck(256, 256), CSPLayer(256, 256, 1, shortcut=False))
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(256, 128, 1)
        self.C3_p4 = CSPLayer(256, 128, 1, shortcut=False)
        self.reduce_conv1 = BaseConv(128, 64, 1)
        self.C3_p3 = CSPLayer(128, 64, 1, shortcut=False)
        self.bu_conv2 = DWConv(64, 64, 3, 2)
        self.C3_n3 = CSPLayer(128, 128, 1, shortcut=False)
        self.bu_conv1 = DWConv(128, 128, 3, 2)
        self.C3_n4 = CSPLayer(256, 256, 1, shortcut=False)

    def forward(self, dark3: torch.Tensor, dark4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dark5 = self.dark5(dark4)
        fpn_out0 = self.lateral_conv0(dark5)
        f_out0 = self.C3_p4(torch.cat((self.upsample(fpn_out0), dark4), 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat((self.upsample(fpn_out1), dark3), 1))
        pan_out1 = self.C3_n3(torch.cat((self.bu_conv2(pan_out2), fpn_out1), 1))
        pan_out0 = self.C3_n4(torch.cat((self.bu_conv1(pan_out1), fpn_out0), 1))
        return pan_out2, pan_out1, pan_out0


class DecoupledHead(nn.Module):
    """The original YOLOX head (exit1): per level a stem, then separate class and box/objectness towers."""

    input_names = (PAN_S8, PAN_S16, PAN_S32)
    output_names = (EXIT_OUTPUTS[1],)

    def __init__(self, in_channels: tuple[int, ...] = (64, 128, 256), width: int = 64) -> None:
        super().__init__()
        self.stems = nn.ModuleList(BaseConv(c, width, 1) for c in in_channels)
        self.cls_convs = nn.ModuleList(nn.Sequential(DWConv(width, width), DWConv(width, width)) for _ in in_channels)
        self.reg_convs = nn.ModuleList(nn.Sequential(DWConv(width, width), DWConv(width, width)) for _ in in_channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(width, NUM_CLASSES, 1) for _ in in_channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(width, 4, 1) for _ in in_channels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(width, 1, 1) for _ in in_channels)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        levels = []
        for k, x in enumerate(features):
            # This order (cls tower before reg tower) is the ONNX graph's, which weight loading relies on.
            x = self.stems[k](x)
            cls = self.cls_preds[k](self.cls_convs[k](x))
            reg_feat = self.reg_convs[k](x)
            reg, obj = self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat)
            levels.append(torch.cat((reg, obj.sigmoid(), cls.sigmoid()), 1))
        return flatten_levels(levels)


class LightExitHead(nn.Module):
    """exit0: a small head on dark3/dark4, trained by distillation from the full network.

    A minimal top-down fusion gives the stride-8 level dark4's context (1x1 reduce, nearest
    upsample, add); a strided depthwise-separable conv makes the stride-32 level. Each level gets a
    short depthwise-separable tower (one conv at stride 8, where every conv costs 4x, two at 16 and
    32) and one 1x1 predictor for box, objectness and classes: a shared tower instead of YOLOX's
    two, which halves the cost. About 1.6 ms in onnxruntime (1 thread) against 3.1 ms for the
    original head plus 5.2 ms for dark5 and the neck.
    """

    input_names = (DARK3, DARK4)
    output_names = (EXIT_OUTPUTS[0],)

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.reduce16 = BaseConv(128, 64, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.down32 = DWConv(128, width, 3, 2)
        self.towers = nn.ModuleList([
            DWConv(64, width),
            nn.Sequential(DWConv(128, width), DWConv(width, width)),
            nn.Sequential(DWConv(width, width), DWConv(width, width)),
        ])
        self.preds = nn.ModuleList(nn.Conv2d(width, 5 + NUM_CLASSES, 1) for _ in STRIDES)

    def logits_by_channel(self, dark3: torch.Tensor, dark4: torch.Tensor) -> torch.Tensor:
        """[B, 85, 3549]: box regression, then objectness and class logits (before their sigmoids)."""
        p8 = dark3 + self.upsample(self.reduce16(dark4))
        features = (p8, dark4, self.down32(dark4))
        return torch.cat([pred(tower(x)).flatten(2) for x, tower, pred in zip(features, self.towers, self.preds)], 2)

    def logits(self, dark3: torch.Tensor, dark4: torch.Tensor) -> torch.Tensor:
        """[B, 3549, 85] in the output layout, objectness and classes as logits (what the loss wants)."""
        return self.logits_by_channel(dark3, dark4).permute(0, 2, 1)

    def forward(self, dark3: torch.Tensor, dark4: torch.Tensor) -> torch.Tensor:
        raw = self.logits_by_channel(dark3, dark4)
        # Sigmoid on contiguous channel slices, one transpose at the end: cheaper than on the last axis.
        return torch.cat((raw[:, :4], raw[:, 4:].sigmoid()), 1).permute(0, 2, 1)

    def init_from_teacher(self, head: DecoupledHead) -> None:
        """Start the predictors' biases at the teacher's (its priors for objectness and classes)."""
        with torch.no_grad():
            for k, pred in enumerate(self.preds):
                pred.bias[:4] = head.reg_preds[k].bias
                pred.bias[4:5] = head.obj_preds[k].bias
                pred.bias[5:] = head.cls_preds[k].bias
                pred.weight.mul_(0.1)  # small start: the first outputs are close to the teacher's priors


class YOLOXNanoExits(nn.Module):
    """All parts, named as in the manifest. Full depth = stage0 -> stage1 -> exit1."""

    part_names = ("stage0", "exit0", "stage1", "exit1")

    def __init__(self) -> None:
        super().__init__()
        self.stage0 = Stage0()
        self.stage1 = Stage1()
        self.exit0 = LightExitHead()
        self.exit1 = DecoupledHead()

    def part(self, name: str) -> nn.Module:
        if name not in self.part_names:
            raise KeyError(f"no part {name!r} (have {', '.join(self.part_names)})")
        return getattr(self, name)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both exits' outputs for a batch of letterboxed images."""
        dark3, dark4 = self.stage0(images)
        return self.exit0(dark3, dark4), self.exit1(*self.stage1(dark3, dark4))

    def full_depth(self, images: torch.Tensor) -> torch.Tensor:
        """The original network: what yolox_nano.onnx computes."""
        return self.exit1(*self.stage1(*self.stage0(images)))


# ----------------------------------------------------------------------------- weights

def _onnx_conv_weights(onnx_path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of every Conv node in graph order (the order the original model ran them)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    return [(initializers[node.input[1]], initializers[node.input[2]]) for node in graph.node if node.op_type == "Conv"]


def _convs_in_execution_order(model: YOLOXNanoExits) -> list[nn.Conv2d]:
    """The original network's convs in the order a full-depth forward runs them."""
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_pre_hook(lambda module, _args: order.append(module))
             for part in (model.stage0, model.stage1, model.exit1) for m in part.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.full_depth(torch.zeros(1, 3, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def load_original_weights(model: YOLOXNanoExits, onnx_path: Path = ORIGINAL_ONNX) -> None:
    """Copy the pretrained (BN-folded) conv weights from the ONNX initializers into stage0/stage1/exit1."""
    onnx_convs = _onnx_conv_weights(Path(onnx_path))
    torch_convs = _convs_in_execution_order(model)
    if len(onnx_convs) != len(torch_convs):
        raise ValueError(f"{onnx_path}: {len(onnx_convs)} convs, the rebuilt network has {len(torch_convs)}")
    with torch.no_grad():
        for i, ((weight, bias), conv) in enumerate(zip(onnx_convs, torch_convs)):
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise ValueError(f"{onnx_path}: conv #{i} has shape {weight.shape}, expected {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.tensor(weight))  # a copy: onnx's arrays are read-only
            conv.bias.copy_(torch.tensor(bias))


def exit_state(model: YOLOXNanoExits) -> dict[str, np.ndarray]:
    """The trained (non-original) parameters as numpy arrays, keyed by their module path."""
    return {f"exit0.{name}": t.detach().cpu().numpy() for name, t in model.exit0.state_dict().items()}


def save_exit_weights(model: YOLOXNanoExits, path: Path = EXITS_NPZ) -> None:
    np.savez(path, **exit_state(model))


def load_exit_weights(model: YOLOXNanoExits, path: Path = EXITS_NPZ) -> None:
    with np.load(path, allow_pickle=False) as data:
        state = {key.removeprefix("exit0."): torch.from_numpy(data[key]) for key in data.files if key.startswith("exit0.")}
    model.exit0.load_state_dict(state, strict=True)


def build_model(onnx_path: Path = ORIGINAL_ONNX, exits_path: Path | None = EXITS_NPZ) -> YOLOXNanoExits:
    """The model in eval mode with pretrained weights, and trained exit weights if `exits_path` exists."""
    model = YOLOXNanoExits()
    load_original_weights(model, onnx_path)
    if exits_path is not None and Path(exits_path).is_file():
        load_exit_weights(model, exits_path)
    else:
        model.exit0.init_from_teacher(model.exit1)
    return model.eval()
