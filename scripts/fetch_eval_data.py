"""Fetch and prepare the labelled video evaluated besides PETS09 (docs/BENCHMARKS.md, "Evaluation data").

The sequences are MOTChallenge 2D MOT 2015 training sequences (CC BY-NC-SA 3.0): they may not be
redistributed with this project, so this script fetches them and nothing of them is committed.
Every file read is checked against the SHA-256 pinned in scripts/eval_data.sha256 before it is used,
and so is every file written except the video, which is checked by decoding it again: each frame
must equal the decoded source image (FFV1 is lossless).

Source: the pinned commit of a public repository that holds the sequences as MOTChallenge
distributes them (images and gt.txt unchanged). Either straight from raw.githubusercontent.com
(a machine with network), or from a local clone or mirror of that repository (--git-dir).

    python scripts/fetch_eval_data.py                                 # downloads, writes data/eval/
    python scripts/fetch_eval_data.py --git-dir /path/to/clone/of/MOT15-Detectron2-Sort-DeepSort

Writes data/eval/<sequence>/: video.avi (FFV1, the sequence's own frame rate), person.json (COCO
person boxes; images carry `frame_index`, the frame's index in video.avi) and gt.txt (the MOT csv,
unchanged). Needs the project's own dependencies (it reads MOT csv with perception's reader).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from perception.config import ConfigError  # noqa: E402
from perception.evaluation.mot import load_mot_csv  # noqa: E402

SOURCE_REPO = "JCLArriaga5/MOT15-Detectron2-Sort-DeepSort"
# The commit that added 2DMOT2015 train/ETH-Sunnyday, TUD-Campus and TUD-Stadtmitte; a later commit
# of that repository deleted them again, so they are read at this commit, never from a branch.
SOURCE_COMMIT = "7e336a089850565b562c566c1dafe994ddc7c5e5"
RAW_URL = f"https://raw.githubusercontent.com/{SOURCE_REPO}/{SOURCE_COMMIT}/"
CHECKSUMS = Path(__file__).with_name("eval_data.sha256")
LICENCE = ("MOTChallenge 2D MOT 2015 (motchallenge.net), CC BY-NC-SA 3.0; not redistributed by this project. "
           "Please cite Leal-Taixe et al., MOTChallenge 2015: Towards a Benchmark for Multi-Target Tracking, "
           "arXiv:1504.01942, and the sequence's original authors.")


@dataclass(frozen=True)
class Sequence:
    name: str
    fps: int  # as MOTChallenge's seqinfo gives it
    frames: int
    width: int
    height: int
    scene: str


SEQUENCES = {s.name: s for s in [
    Sequence("TUD-Stadtmitte", 25, 179, 640, 480, "static camera at head height, pedestrians in a busy street"),
    Sequence("TUD-Campus", 25, 71, 640, 480, "static camera, pedestrians crossing a campus path"),
    Sequence("ETH-Sunnyday", 14, 354, 640, 480, "camera moving with a mobile platform on a sidewalk, pedestrians"),
]}


class FetchError(Exception):
    """A source file is missing, unreadable or not the pinned one; the message names it."""


def load_checksums(path: Path = CHECKSUMS) -> dict[str, str]:
    """{relative name: sha256 hex} from a `sha256sum`-style file."""
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            pins[name.strip()] = digest
    return pins


def verified(name: str, data: bytes, pins: dict[str, str]) -> bytes:
    if name not in pins:
        raise FetchError(f"{name}: no pinned checksum in {CHECKSUMS.name}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != pins[name]:
        raise FetchError(f"{name}: sha256 {digest} is not the pinned {pins[name]}")
    return data


class GitSource:
    """Files of the pinned commit from a local clone or mirror (bare or not), one `git cat-file` process."""

    def __init__(self, git_dir: Path) -> None:
        self._process = subprocess.Popen(["git", "-C", str(git_dir), "cat-file", "--batch"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE)

    def read(self, path: str) -> bytes:
        self._process.stdin.write(f"{SOURCE_COMMIT}:{path}\n".encode())
        self._process.stdin.flush()
        header = self._process.stdout.readline().decode().split()
        if len(header) != 3:
            raise FetchError(f"{path}: not in commit {SOURCE_COMMIT[:12]} of the given --git-dir ({' '.join(header)})")
        data = self._process.stdout.read(int(header[2]))
        self._process.stdout.read(1)  # the newline after each object
        return data

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait()


class HttpSource:
    def read(self, path: str) -> bytes:
        try:
            with urllib.request.urlopen(RAW_URL + path, timeout=60) as response:
                return response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"{RAW_URL + path}: {exc}") from None

    def close(self) -> None:
        pass


def coco_person(sequence: Sequence, gt_path: Path) -> dict:
    """COCO person boxes for every frame of the sequence; MOT flag-0 lines (ignored regions) are iscrowd."""
    truth = load_mot_csv(gt_path)
    images, annotations = [], []
    for frame in range(1, sequence.frames + 1):
        images.append({"id": frame, "file_name": f"{frame:06d}.jpg", "width": sequence.width,
                       "height": sequence.height, "frame_index": frame - 1})
        for track_id, x, y, w, h, flag in truth.get(frame, []):
            annotations.append({"id": len(annotations) + 1, "image_id": frame, "category_id": 1, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0 if flag else 1, "track_id": track_id})
    beyond = sorted(f for f in truth if not 1 <= f <= sequence.frames)
    if beyond:
        raise FetchError(f"{gt_path}: boxes for frame {beyond[0]}, outside frames 1-{sequence.frames}")
    return {"info": {"description": f"MOTChallenge 2DMOT2015 train/{sequence.name} ground truth as COCO person boxes; "
                                    "image id = MOT frame, frame_index = that frame's index in video.avi; "
                                    "MOT lines whose 7th field is 0 are iscrowd (ignored)",
                     "licence": LICENCE},
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}


def write_video(sequence: Sequence, source, pins: dict[str, str], path: Path) -> None:
    """Every image of the sequence, checked against its pin, decoded and written losslessly; then
    read back: the video must hold exactly those frames."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), sequence.fps,
                             (sequence.width, sequence.height))
    if not writer.isOpened():
        raise FetchError(f"{path}: OpenCV cannot write FFV1 video here")
    digests = []
    for frame in range(1, sequence.frames + 1):
        name = f"{sequence.name}/img1/{frame:06d}.jpg"
        data = verified(name, source.read(f"dataset/train/{name}"), pins)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.shape != (sequence.height, sequence.width, 3):
            raise FetchError(f"{name}: not a {sequence.width}x{sequence.height} image")
        writer.write(image)
        digests.append(hashlib.sha256(image.tobytes()).digest())
    writer.release()
    capture = cv2.VideoCapture(str(path))
    for frame, digest in enumerate(digests, start=1):
        ok, image = capture.read()
        if not ok or hashlib.sha256(image.tobytes()).digest() != digest:
            raise FetchError(f"{path}: frame {frame} does not decode to {sequence.name}/img1/{frame:06d}.jpg")
    if capture.read()[0] or abs(capture.get(cv2.CAP_PROP_FPS) - sequence.fps) > 1e-6:
        raise FetchError(f"{path}: more frames than {sequence.frames}, or not {sequence.fps} fps")
    capture.release()


def prepare(sequence: Sequence, source, pins: dict[str, str], out: Path) -> None:
    folder = out / sequence.name
    folder.mkdir(parents=True, exist_ok=True)
    gt = verified(f"{sequence.name}/gt/gt.txt", source.read(f"dataset/train/{sequence.name}/gt/gt.txt"), pins)
    (folder / "gt.txt").write_bytes(gt)
    try:
        annotations = json.dumps(coco_person(sequence, folder / "gt.txt")).encode()
    except ConfigError as exc:
        raise FetchError(str(exc)) from None
    (folder / "person.json").write_bytes(verified(f"{sequence.name}/person.json", annotations, pins))
    with tempfile.TemporaryDirectory(dir=folder) as scratch:  # a half-written video never takes video.avi's place
        partial = Path(scratch) / "video.avi"
        write_video(sequence, source, pins, partial)
        partial.replace(folder / "video.avi")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--git-dir", type=Path, default=None,
                        help=f"a local clone or mirror of github.com/{SOURCE_REPO} (default: download)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "eval")
    parser.add_argument("--only", action="append", choices=sorted(SEQUENCES), help="this sequence only (repeatable)")
    args = parser.parse_args(argv)
    if args.git_dir is not None and not args.git_dir.is_dir():
        parser.error(f"--git-dir {args.git_dir}: not a directory")
    pins = load_checksums()
    source = GitSource(args.git_dir) if args.git_dir else HttpSource()
    try:
        for name in args.only or list(SEQUENCES):
            prepare(SEQUENCES[name], source, pins, args.out)
            print(f"{args.out / name}: {SEQUENCES[name].frames} frames, {SEQUENCES[name].fps} fps, checked", flush=True)
    except FetchError as exc:
        print(f"fetch_eval_data: {exc}", file=sys.stderr)
        return 1
    finally:
        source.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
