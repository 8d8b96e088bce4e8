"""TensorRT: builds each model part's ONNX file into a serialized engine, caches it, runs it on a CUDA stream.

Written against the TensorRT 10 Python API (named I/O tensors, execute_async_v3, no binding indices) and
cuda-python's runtime bindings (`cuda.bindings.runtime`, or the older `cuda.cudart`). Neither is imported
until this engine is used: the module imports anywhere, and `unavailable_reason` says in one line why the
engine cannot run here.

Engines are cached in TensorRTConfig.cache_dir (default ~/.cache/perception/tensorrt) under a key that
covers everything that changes the build: the ONNX bytes, the GPU and its compute capability, the
TensorRT version, the precision, the workspace and, for int8, the calibration input. The key and the
cache paths are pure functions (testable without TensorRT or a GPU).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping

import numpy as np

from perception.engines.base import Engine, EngineConfig, EngineUnavailable, Session, TensorRTConfig

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/perception/tensorrt")
# Bump when the build recipe here changes in a way the other key fields do not capture.
CACHE_FORMAT = 1
KEY_CHARS = 16  # of the sha256 hex digest, in file names: collisions are not a practical concern


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class PrecisionPlan:
    """What a TensorRTConfig precision means for the builder, decided without TensorRT."""

    set_flags: tuple[str, ...]  # trt.BuilderFlag member names to set
    clear_flags: tuple[str, ...]  # ... and to clear
    calibrate: bool  # implicit INT8: attach an entropy calibrator
    note: str | None = None  # why the build runs at a lower precision than asked, for the log


# ----------------------------------------------------------------------------------------------------
# Pure functions: precision, cache key and layout, calibration input.


def has_fast_fp16(compute_capability: tuple[int, int]) -> bool:
    """Whether the GPU runs FP16 faster than FP32. Replaces IBuilder.platform_has_fast_fp16 (deprecated
    in TensorRT 10.5, removed in 11): sm_53, sm_60, sm_62 and sm_70+ have full-rate FP16; sm_61
    (consumer Pascal) and Maxwell before sm_53 run it at a fraction of FP32 speed."""
    major, minor = compute_capability
    return major >= 7 or (major, minor) in {(5, 3), (6, 0), (6, 2)}


def precision_plan(precision: str, fast_fp16: bool, available_flags: Collection[str]) -> PrecisionPlan:
    """Builder flags for a precision, given the GPU's FP16 speed and the BuilderFlag names this TensorRT
    has (TensorRT 11 removed FP16/INT8: strongly typed networks only)."""
    if precision == "fp32":
        # TF32 is TensorRT's default for FP32 layers; clear it so "fp32" matches ONNX Runtime closely.
        # fp16 is the fast choice anyway.
        return PrecisionPlan((), ("TF32",) if "TF32" in available_flags else (), False)
    if precision == "fp16":
        if "FP16" not in available_flags:
            return PrecisionPlan((), (), False, "this TensorRT has no FP16 builder flag (strongly typed "
                                 "networks only); building with the ONNX file's own types")
        if not fast_fp16:
            return PrecisionPlan((), (), False, "this GPU has no fast FP16; building FP32")
        return PrecisionPlan(("FP16",), (), False)
    if precision == "int8":
        if "INT8" not in available_flags:
            raise EngineUnavailable("int8: this TensorRT has no implicit INT8 calibration (removed in 11.x); "
                                    "quantize the ONNX with Q/DQ nodes, or use fp16")
        # FP16 as the fallback for layers without an INT8 kernel, where FP16 is fast.
        fallback = ("FP16",) if fast_fp16 and "FP16" in available_flags else ()
        return PrecisionPlan(("INT8", *fallback), (), True)
    raise ValueError(f"unknown TensorRT precision {precision!r} (fp32, fp16 or int8)")


def resolve_cache_dir(config: TensorRTConfig) -> Path:
    return Path(config.cache_dir or DEFAULT_CACHE_DIR).expanduser()


def cache_key(model_bytes: bytes, gpu: GpuInfo, trt_version: str, config: TensorRTConfig) -> str:
    """sha256 hex digest over everything that changes the engine built from these ONNX bytes. The device
    index is not in it: the same GPU model with the same compute capability gets the same engine."""
    fields: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "gpu": gpu.name,
        "compute_capability": list(gpu.compute_capability),
        "tensorrt": trt_version,
        "precision": config.precision,
        "workspace_mb": config.workspace_mb,
    }
    if config.precision == "int8":
        # By file name, not content: a vehicle must find its engine without the calibration video.
        video = config.calibration_video
        fields["calibration"] = {"video": Path(video).name if video else None, "frames": config.calibration_frames}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def engine_cache_path(cache_dir: Path, onnx_path: Path, part_name: str, precision: str, key: str) -> Path:
    """<cache_dir>/<onnx stem>.<part>.<precision>.<key prefix>.engine: readable, and unique per build."""
    return Path(cache_dir) / f"{Path(onnx_path).stem}.{part_name}.{precision}.{key[:KEY_CHARS]}.engine"


def calibration_cache_path(engine_path: Path) -> Path:
    """The INT8 calibration cache sits next to the engine it calibrated, under the same key."""
    return engine_path.with_suffix(".calib")


def timing_cache_path(cache_dir: Path, gpu: GpuInfo, trt_version: str) -> Path:
    """One timing cache per GPU model and TensorRT version: tactic timings are valid for nothing else."""
    digest = hashlib.sha256(json.dumps([gpu.name, list(gpu.compute_capability), trt_version]).encode()).hexdigest()
    return Path(cache_dir) / f"timing.{digest[:KEY_CHARS]}.cache"


def static_input_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape an input is built for: a dynamic batch dimension becomes 1 (one frame at a time, lowest
    latency); any other dynamic dimension is an error, since nothing here would know what to pick."""
    if any(d < 0 for d in shape[1:]):
        raise EngineUnavailable(f"input {name} has dynamic dimensions {list(shape)} beyond the batch; "
                                "export it with fixed sizes")
    return tuple(1 if d < 0 else d for d in shape)


def calibration_batches(video: Path | None, frames: int, width: int, height: int,
                        pad_value: float = 114.0) -> Iterator[np.ndarray]:
    """Up to `frames` letterboxed frames of a real video as float32 [1,3,height,width] batches, as the
    detector preprocesses them. Checks the video now, not on the first batch."""
    from perception.sources import SourceError, VideoFileSource

    if video is None:
        raise EngineUnavailable("int8 needs a calibration video (tensorrt.calibration_video / --calibration-video)")
    try:
        source = VideoFileSource(Path(video))
    except SourceError as exc:
        raise EngineUnavailable(f"int8 calibration: {exc}") from None
    return _letterboxed_frames(source, frames, width, height, pad_value)


def _letterboxed_frames(source: Any, frames: int, width: int, height: int, pad_value: float) -> Iterator[np.ndarray]:
    from perception.detection.yolox import letterbox

    count = 0
    try:
        while count < frames:
            item = source.read()
            if item is None:
                log.warning("calibration video %s has only %d of the %d frames asked for", source.path, count, frames)
                return
            batch, _ = letterbox(item[0], width, height, pad_value)
            count += 1
            yield batch
    finally:
        source.close()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write-then-rename: several processes may build the same engine; none may read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------
# Lazy imports and the CUDA runtime.


def _import_tensorrt() -> Any:
    import tensorrt

    return tensorrt


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        from cuda import cudart  # older cuda-python

        return cudart


class CudaRuntime:
    """The few cudart calls used here, each checked: cuda-python returns (error, *values) tuples."""

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def check(self, result: Any, call: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{call} failed: {self.error_text(err)}")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    def error_text(self, err: Any) -> str:
        name = self.rt.cudaGetErrorName(err)[1]
        text = self.rt.cudaGetErrorString(err)[1]
        decode = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else str(b)  # noqa: E731
        return f"{decode(name)} ({decode(text)})"

    def device_count(self) -> int:
        return self.check(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount")

    def set_device(self, device: int) -> None:
        self.check(self.rt.cudaSetDevice(device), f"cudaSetDevice({device})")

    def device_info(self, device: int) -> GpuInfo:
        props = self.check(self.rt.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name.split("\x00", 1)[0].strip(), (int(props.major), int(props.minor)))

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))

    def free(self, pointer: int) -> None:
        self.check(self.rt.cudaFree(pointer), "cudaFree")

    def pinned_array(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, int]:
        """Page-locked host memory viewed as a numpy array: async copies from it really are async."""
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        pointer = int(self.check(self.rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
        raw = (ctypes.c_uint8 * nbytes).from_address(pointer)
        count = int(np.prod(shape))
        array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
        return array, pointer

    def free_host(self, pointer: int) -> None:
        self.check(self.rt.cudaFreeHost(pointer), "cudaFreeHost")

    def stream_create(self) -> Any:
        # Non-blocking: no implicit synchronisation with the legacy default stream other libraries may use.
        return self.check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    def stream_destroy(self, stream: Any) -> None:
        self.check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream: Any) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def copy_to_device(self, device_pointer: int, host: np.ndarray, stream: Any, what: str) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpyAsync(device_pointer, host.ctypes.data, host.nbytes, kind, stream),
                   f"cudaMemcpyAsync host->device ({what})")

    def copy_to_host(self, host: np.ndarray, device_pointer: int, stream: Any, what: str) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(host.ctypes.data, device_pointer, host.nbytes, kind, stream),
                   f"cudaMemcpyAsync device->host ({what})")


def _make_logger(trt: Any) -> Any:
    """A trt.ILogger that forwards to Python logging and keeps the last errors for exception messages."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors = (self.errors + [msg.strip()])[-3:]
                log.error("TensorRT: %s", msg)
            elif severity == sev.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == sev.INFO:
                log.debug("TensorRT: %s", msg)

        def last_errors(self) -> str:
            return " | ".join(e.replace("\n", " ") for e in self.errors) or "no error message from TensorRT"

    return _Logger()


def _to_bytes(host_memory: Any) -> bytes:
    # IHostMemory exposes the buffer protocol.
    return bytes(memoryview(host_memory))


# ----------------------------------------------------------------------------------------------------
# INT8 calibration.


def _make_calibrator(trt: Any, cuda: CudaRuntime, batches: Iterator[np.ndarray], nbytes: int, cache_path: Path) -> Any:
    """An IInt8EntropyCalibrator2 feeding `batches` (one frame each) through one device buffer."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.device = cuda.malloc(nbytes)
            self.stream = cuda.stream_create()
            self.error: BaseException | None = None  # exceptions cannot cross back into TensorRT's C++
            self.count = 0

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                batch = next(batches, None)
                if batch is None:
                    return None
                batch = np.ascontiguousarray(batch, np.float32)
                cuda.copy_to_device(self.device, batch, self.stream, "calibration batch")
                cuda.synchronize(self.stream)
                self.count += 1
                return [self.device]
            except BaseException as exc:
                self.error = exc
                return None

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            _atomic_write(cache_path, _to_bytes(cache))

        def free(self) -> None:
            cuda.free(self.device)
            cuda.stream_destroy(self.stream)

    return _Calibrator()


# ----------------------------------------------------------------------------------------------------
# Running.


@dataclass
class _Binding:
    name: str
    is_input: bool
    host: np.ndarray  # pinned
    host_pointer: int
    device_pointer: int


class TensorRTSession(Session):
    """One execution context with its buffers and CUDA stream, all allocated once."""

    def __init__(self, trt: Any, engine: Any, cuda: CudaRuntime, device: int, part_name: str) -> None:
        self._cuda = cuda
        self._device = device
        self._part = part_name
        self._engine = engine  # the context needs its engine alive
        self._bindings: list[_Binding] = []
        self._stream: Any = None
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineUnavailable(f"{part_name}: TensorRT cannot create an execution context (out of GPU memory?)")
        try:
            self._stream = cuda.stream_create()
            self._allocate(trt, engine)
        except BaseException:
            self.close()
            raise
        self.input_names = tuple(b.name for b in self._bindings if b.is_input)
        self.output_names = tuple(b.name for b in self._bindings if not b.is_input)

    def _allocate(self, trt: Any, engine: Any) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:  # input shapes first: output shapes of a dynamic engine follow from them
            shape = tuple(engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                shape = tuple(engine.get_tensor_profile_shape(name, 0)[2])  # built with min = opt = max
                if not self._context.set_input_shape(name, shape):
                    raise EngineUnavailable(f"{self._part}: TensorRT rejects input shape {list(shape)} for {name}")
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            host, host_pointer = self._cuda.pinned_array(shape, dtype)
            binding = _Binding(name, name in inputs, host, host_pointer, 0)
            self._bindings.append(binding)  # before malloc: close() frees whatever was allocated
            binding.device_pointer = self._cuda.malloc(host.nbytes)
            # Addresses persist in the context, and these buffers never move: set once, not per run.
            if not self._context.set_tensor_address(name, binding.device_pointer):
                raise EngineUnavailable(f"{self._part}: TensorRT rejects the device buffer for tensor {name}")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._stream is None:
            raise RuntimeError(f"{self._part}: the TensorRT session is closed")
        if self._device:
            self._cuda.set_device(self._device)  # the current device is per thread; run may be on another
        for b in self._bindings:
            if b.is_input:
                self._stage_input(b, feeds)
                self._cuda.copy_to_device(b.device_pointer, b.host, self._stream, b.name)
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"{self._part}: TensorRT execute_async_v3 failed (see the TensorRT log)")
        for b in self._bindings:
            if not b.is_input:
                self._cuda.copy_to_host(b.host, b.device_pointer, self._stream, b.name)
        self._cuda.synchronize(self._stream)
        # Copies: the pinned buffers are overwritten by the next run.
        return {b.name: b.host.copy() for b in self._bindings if not b.is_input}

    def _stage_input(self, binding: _Binding, feeds: Mapping[str, np.ndarray]) -> None:
        if binding.name not in feeds:
            raise KeyError(f"{self._part}: no feed for input {binding.name} (have {sorted(feeds)})")
        array = np.asarray(feeds[binding.name])
        if array.shape != binding.host.shape:
            raise ValueError(f"{self._part}: input {binding.name} has shape {array.shape}, "
                             f"the engine takes {binding.host.shape}")
        np.copyto(binding.host, array, casting="same_kind")

    def close(self) -> None:
        """Free every buffer and the stream; raises the first CUDA error only after trying them all."""
        errors: list[CudaError] = []
        for b in self._bindings:
            for free, pointer in ((self._cuda.free, b.device_pointer), (self._cuda.free_host, b.host_pointer)):
                if pointer:
                    try:
                        free(pointer)
                    except CudaError as exc:
                        errors.append(exc)
        self._bindings = []
        if self._stream is not None:
            try:
                self._cuda.stream_destroy(self._stream)
            except CudaError as exc:
                errors.append(exc)
            self._stream = None
        self._context = None
        self._engine = None
        if errors:
            raise errors[0]


# ----------------------------------------------------------------------------------------------------
# The engine: cache lookup, building, opening.


@dataclass(frozen=True)
class PreparedEngine:
    path: Path
    built: bool  # False: reused from the cache
    engine: Any  # trt.ICudaEngine


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, config: EngineConfig) -> None:
        reason = self.unavailable_reason(config)
        if reason is not None:
            raise EngineUnavailable(f"tensorrt unavailable: {reason}")
        self.config = config
        self.settings = config.tensorrt
        self.cache_dir = resolve_cache_dir(config.tensorrt)
        self._trt = _import_tensorrt()
        self._cuda = CudaRuntime(_import_cudart())
        self._cuda.set_device(self.settings.device)
        self.gpu = self._cuda.device_info(self.settings.device)
        self.trt_version = str(self._trt.__version__)
        self._logger = _make_logger(self._trt)  # must outlive every builder, runtime and engine
        self._runtime = self._trt.Runtime(self._logger)

    @classmethod
    def unavailable_reason(cls, config: EngineConfig) -> str | None:
        try:
            _import_tensorrt()
        except ImportError:
            return "tensorrt is not installed"
        except Exception as exc:  # e.g. the wheel is there but libnvinfer cannot be loaded
            return f"tensorrt cannot be imported ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        try:
            cuda = CudaRuntime(_import_cudart())
        except ImportError:
            return "cuda-python is not installed (neither cuda.bindings.runtime nor cuda.cudart imports)"
        return _gpu_reason(cuda, config.tensorrt.device)

    def open(self, onnx_path: Path, part_name: str) -> Session:
        prepared = self.prepare(Path(onnx_path), part_name)
        log.debug("%s: %s engine %s", part_name, "built" if prepared.built else "cached", prepared.path)
        return TensorRTSession(self._trt, prepared.engine, self._cuda, self.settings.device, part_name)

    def describe(self) -> str:
        major, minor = self.gpu.compute_capability
        return f"tensorrt {self.trt_version} ({self.settings.precision}, {self.gpu.name} sm_{major}{minor})"

    def prepare(self, onnx_path: Path, part_name: str) -> PreparedEngine:
        """The deserialized engine for a part: from the cache when a usable one is there, else built."""
        if not onnx_path.is_file():
            raise EngineUnavailable(f"model file {onnx_path} does not exist")
        model_bytes = onnx_path.read_bytes()
        key = cache_key(model_bytes, self.gpu, self.trt_version, self.settings)
        path = engine_cache_path(self.cache_dir, onnx_path, part_name, self.settings.precision, key)
        if path.is_file():
            engine = self._deserialize(path.read_bytes())
            if engine is not None:
                return PreparedEngine(path, False, engine)
            log.warning("%s: cached engine %s cannot be deserialized (corrupt, or from another TensorRT/GPU); rebuilding",
                        part_name, path)
        plan = self.build(onnx_path, model_bytes, part_name, path)
        _atomic_write(path, plan)
        engine = self._deserialize(plan)
        if engine is None:
            raise EngineUnavailable(f"{onnx_path}: TensorRT cannot deserialize the engine it just built "
                                    f"({self._logger.last_errors()})")
        return PreparedEngine(path, True, engine)

    def _deserialize(self, plan: bytes) -> Any:
        try:
            return self._runtime.deserialize_cuda_engine(plan)
        except Exception as exc:  # some versions raise instead of returning None
            log.debug("deserialize_cuda_engine raised %s", exc)
            return None

    def build(self, onnx_path: Path, model_bytes: bytes, part_name: str, engine_path: Path) -> bytes:
        """Parse and build one ONNX part into a serialized engine, using and updating the timing cache."""
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(model_bytes, path=str(onnx_path)):  # path: external weights resolve next to it
            errors = "; ".join(_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineUnavailable(f"{onnx_path}: TensorRT cannot parse it ({parser.num_errors} errors: {errors})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.settings.workspace_mb << 20)
        profile = self._fix_dynamic_inputs(builder, network, config)
        calibrator = self._apply_precision(config, network, part_name, engine_path, profile)
        timing_path = timing_cache_path(self.cache_dir, self.gpu, self.trt_version)
        self._load_timing_cache(config, timing_path)
        log.info("%s: building a TensorRT %s engine from %s (this takes a while)",
                 part_name, self.settings.precision, onnx_path.name)
        try:
            plan = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.free()
        if calibrator is not None and calibrator.error is not None:
            raise EngineUnavailable(f"{part_name}: int8 calibration failed ({calibrator.error})") from calibrator.error
        if plan is None:
            raise EngineUnavailable(f"{onnx_path}: TensorRT build failed ({self._logger.last_errors()})")
        self._save_timing_cache(config, timing_path)
        return _to_bytes(plan)

    def _fix_dynamic_inputs(self, builder: Any, network: Any, config: Any) -> Any:
        """An optimization profile pinning dynamic batch dimensions to 1, or None when all are static."""
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        dynamic = [(t.name, tuple(t.shape)) for t in inputs if any(d < 0 for d in tuple(t.shape))]
        if not dynamic:
            return None
        profile = builder.create_optimization_profile()
        for name, shape in dynamic:
            fixed = static_input_shape(name, shape)
            profile.set_shape(name, fixed, fixed, fixed)
        config.add_optimization_profile(profile)
        return profile

    def _apply_precision(self, config: Any, network: Any, part_name: str, engine_path: Path, profile: Any) -> Any:
        """Set the precision flags; for int8, attach and return the calibrator (the caller frees it)."""
        trt = self._trt
        available = set(getattr(trt.BuilderFlag, "__members__", {}))
        plan = precision_plan(self.settings.precision, has_fast_fp16(self.gpu.compute_capability), available)
        if plan.note:
            log.warning("%s: %s", part_name, plan.note)
        for flag in plan.set_flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        for flag in plan.clear_flags:
            config.clear_flag(getattr(trt.BuilderFlag, flag))
        if not plan.calibrate:
            return None
        if not hasattr(trt, "IInt8EntropyCalibrator2") or not hasattr(config, "int8_calibrator"):
            raise EngineUnavailable(f"int8: TensorRT {self.trt_version} has no IInt8EntropyCalibrator2 / int8_calibrator "
                                    "(implicit INT8 is deprecated in 10.x, removed in 11.x); use Q/DQ nodes or fp16")
        calibrator = self._calibrator(network, part_name, calibration_cache_path(engine_path))
        config.int8_calibrator = calibrator
        if profile is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)
        return calibrator

    def _calibrator(self, network: Any, part_name: str, cache_path: Path) -> Any:
        image = _image_input(network, part_name)
        name, (_, channels, height, width) = image
        if cache_path.is_file():
            log.info("%s: reusing the INT8 calibration cache %s", part_name, cache_path)
            batches: Iterator[np.ndarray] = iter(())
        else:
            batches = calibration_batches(self.settings.calibration_video, self.settings.calibration_frames, width, height)
        nbytes = channels * height * width * np.dtype(np.float32).itemsize
        return _make_calibrator(self._trt, self._cuda, batches, nbytes, cache_path)

    def _load_timing_cache(self, config: Any, path: Path) -> None:
        data = path.read_bytes() if path.is_file() else b""
        try:
            cache = config.create_timing_cache(data)
        except Exception as exc:  # a corrupt file: start afresh rather than fail the build
            log.warning("timing cache %s is unreadable (%s); starting a new one", path, exc)
            cache = None
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            if data:
                log.warning("timing cache %s does not fit this GPU/TensorRT; starting a new one", path)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    def _save_timing_cache(self, config: Any, path: Path) -> None:
        cache = config.get_timing_cache()
        if cache is not None:
            _atomic_write(path, _to_bytes(cache.serialize()))


def _gpu_reason(cuda: CudaRuntime, device: int) -> str | None:
    """None when CUDA sees `device`, else why not."""
    try:
        count = cuda.device_count()
    except CudaError as exc:
        return f"no CUDA GPU visible ({exc})"
    if count == 0:
        return "no CUDA GPU visible"
    if not 0 <= device < count:
        return f"CUDA device {device} is out of range ({count} visible)"
    return None


def _image_input(network: Any, part_name: str) -> tuple[str, tuple[int, int, int, int]]:
    """The single [1,3,H,W] input a part must have to be calibrated on letterboxed frames."""
    inputs = [(network.get_input(i).name, tuple(network.get_input(i).shape)) for i in range(network.num_inputs)]
    if len(inputs) == 1:
        name, shape = inputs[0]
        fixed = static_input_shape(name, shape)
        if len(fixed) == 4 and fixed[0] == 1 and fixed[1] == 3:
            return name, fixed  # type: ignore[return-value]
    raise EngineUnavailable(f"{part_name}: int8 calibration feeds letterboxed frames, but its inputs are {inputs}; "
                            "build this part in fp16")


def _parser_error_text(error: Any) -> str:
    try:
        where = error.node_name() or f"node {error.node()}"
        return f"{where} ({error.node_operator()}): {error.desc()}".replace("\n", " ")
    except AttributeError:  # older parsers lack node_name/node_operator
        return str(error).replace("\n", " ")


# ----------------------------------------------------------------------------------------------------
# CLI: perception build-engine


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = TensorRTConfig()
    parser = argparse.ArgumentParser(prog="perception build-engine",
                                     description="Build (or find cached) TensorRT engines for every part of a manifest.")
    parser.add_argument("manifest", type=Path, help="manifest JSON (e.g. yolox_nano.json)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=defaults.precision)
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default: {DEFAULT_CACHE_DIR}")
    parser.add_argument("--calibration-video", type=Path, default=None, help="int8: real frames to calibrate on")
    parser.add_argument("--calibration-frames", type=int, default=defaults.calibration_frames)
    parser.add_argument("--workspace-mb", type=int, default=defaults.workspace_mb)
    parser.add_argument("--device", type=int, default=defaults.device, help="CUDA device index")
    return parser.parse_args(argv)


def build_main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 all parts ready, 1 TensorRT unavailable or a build failed, 2 bad arguments/manifest."""
    from perception.config import ConfigError
    from perception.detection.manifest import load_manifest

    args = _parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
        settings = TensorRTConfig(precision=args.precision, workspace_mb=args.workspace_mb, cache_dir=args.cache_dir,
                                  calibration_video=args.calibration_video,
                                  calibration_frames=args.calibration_frames, device=args.device)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"build-engine: {exc}", file=sys.stderr)
        return 2
    config = EngineConfig(kind="tensorrt", tensorrt=settings)
    reason = TensorRTEngine.unavailable_reason(config)
    if reason is not None:
        print(f"build-engine: tensorrt unavailable: {reason}", file=sys.stderr)
        return 1
    engine = TensorRTEngine(config)
    parts = [(s.name, s.file) for s in manifest.stages] + [(e.name, e.file) for e in manifest.exits if e.file is not None]
    print(f"{manifest.name}: {engine.describe()}, cache {engine.cache_dir}")
    for part_name, file in parts:
        try:
            prepared = engine.prepare(Path(file), part_name)
        except (EngineUnavailable, CudaError) as exc:
            print(f"build-engine: {part_name}: {exc}", file=sys.stderr)
            return 1
        print(f"{part_name}: {'built' if prepared.built else 'reused'} {prepared.path}")
    return 0
