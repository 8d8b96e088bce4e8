"""Fetch and prepare the labelled video evaluated besides PETS09 (docs/BENCHMARKS.md, "Evaluation data").

The sequences are MOTChallenge training sequences (2D MOT 2015 and MOT17, CC BY-NC-SA 3.0): they may
not be redistributed with this project, so this script fetches them and nothing of them is committed.
Every file read is checked against the SHA-256 pinned in scripts/eval_data.sha256 before it is used,
and so is every file written except the video, which is checked by decoding it again: each frame
must equal the decoded source image (FFV1 is lossless).

Sources: pinned commits of public repositories that hold the sequences as MOTChallenge distributes
them (images and gt.txt unchanged). Either straight from raw.githubusercontent.com (a machine with
network), or from local clones or mirrors of those repositories (--git-dir, once per repository;
each sequence is read from the one that holds its commit).

    python scripts/fetch_eval_data.py                                 # downloads, writes data/eval/
    python scripts/fetch_eval_data.py --git-dir /path/to/MOT15-Detectron2-Sort-DeepSort --git-dir /path/to/boxmot

Writes data/eval/<sequence>/: video.avi (FFV1, the sequence's own frame rate), person.json (COCO
person boxes; images carry `frame_index`, the frame's index in video.avi), gt.txt (the MOT csv,
unchanged) and, for sequences whose ground truth has MOT17's class column, objects.json (COCO boxes
of the classes the detector knows: person, bicycle, car, motorbike, named as the detector names them).
Needs the project's own dependencies (it reads MOT csv with perception's reader).
"""

from __future__ import annotations

import argparse
import csv
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

from perception.config import ConfigError
from perception.evaluation.mot import load_mot_csv

CHECKSUMS = Path(__file__).with_name("eval_data.sha256")
CITE_MOT15 = ("Please cite Leal-Taixe et al., MOTChallenge 2015: Towards a Benchmark for Multi-Target Tracking, "
              "arXiv:1504.01942, and the sequence's original authors.")
CITE_MOT17 = "Please cite Milan et al., MOT16: A Benchmark for Multi-Object Tracking, arXiv:1603.00831."


@dataclass(frozen=True)
class Source:
    """A public repository's pinned commit and the folder in it that holds MOTChallenge sequences."""
    repo: str
    commit: str
    root: str
    licence: str


# The commit that added 2DMOT2015 train/ETH-Sunnyday, TUD-Campus and TUD-Stadtmitte; a later commit
# of that repository deleted them again, so they are read at this commit, never from a branch.
MOT15 = Source("JCLArriaga5/MOT15-Detectron2-Sort-DeepSort", "7e336a089850565b562c566c1dafe994ddc7c5e5",
               "dataset/train", "MOTChallenge 2D MOT 2015 (motchallenge.net), CC BY-NC-SA 3.0; not redistributed "
               "by this project. " + CITE_MOT15)
# boxmot's MOT17-mini test fixture: the first 5 frames of MOT17-13 with their ground truth, in
# MOTChallenge's own layout from this commit ("take back original MOT17 structure") until a later
# commit deleted the sequence; read at this commit. The data stays under MOTChallenge's terms,
# not boxmot's code licence.
MOT17_MINI = Source("mikel-brostrom/boxmot", "6e8a541aa403eaec3ac2fe456b1a64d359d741d7",
                    "assets/MOT17-mini/train", "MOTChallenge MOT17 (motchallenge.net), CC BY-NC-SA 3.0; not "
                    "redistributed by this project. " + CITE_MOT17)


@dataclass(frozen=True)
class Sequence:
    name: str  # the folder under data/eval/ and the prefix of its pinned names
    fps: int  # as MOTChallenge's seqinfo gives it
    frames: int  # frames 1..frames are fetched (and annotated)
    width: int
    height: int
    scene: str
    source: Source
    folder: str  # the sequence's folder under source.root
    mot17_classes: bool = False  # gt.txt's 8th column is MOT17's object class (else MOT15's world x)


SEQUENCES = {s.name: s for s in [
    Sequence("TUD-Stadtmitte", 25, 179, 640, 480, "static camera at head height, pedestrians in a busy street",
             MOT15, "TUD-Stadtmitte"),
    Sequence("TUD-Campus", 25, 71, 640, 480, "static camera, pedestrians crossing a campus path", MOT15, "TUD-Campus"),
    Sequence("ETH-Sunnyday", 14, 354, 640, 480, "camera moving with a mobile platform on a sidewalk, pedestrians",
             MOT15, "ETH-Sunnyday"),
    Sequence("MOT17-13", 25, 5, 1920, 1080, "camera on a moving bus in a city street (first 5 of 750 frames)",
             MOT17_MINI, "MOT17-13-FRCNN", mot17_classes=True),
]}

# MOT17 object classes -> (COCO category, iscrowd). Counted: pedestrians and vehicles the detector
# knows. Ignored (iscrowd): persons MOTChallenge does not score (on a vehicle, static, distractor,
# reflection). Dropped: classes COCO has no category for (non-motorized vehicle, occluders).
MOT17_TO_COCO = {1: ("person", 0), 2: ("person", 1), 7: ("person", 1), 8: ("person", 1), 12: ("person", 1),
                 3: ("car", 0), 4: ("bicycle", 0), 5: ("motorbike", 0)}
COCO_IDS = {"person": 1, "bicycle": 2, "car": 3, "motorbike": 4}  # COCO ids; names as the detector names them
MOT17_CLASS_COLUMN = 7


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
    """Files of pinned commits from local clones or mirrors (bare or not): each commit is read from the
    first given directory that holds it, through one `git cat-file` process per directory."""

    def __init__(self, git_dirs: list[Path]) -> None:
        self._dirs = git_dirs
        self._processes: dict[Path, subprocess.Popen] = {}
        self._dir_for_commit: dict[str, Path] = {}

    def _process_for(self, commit: str) -> subprocess.Popen:
        if commit not in self._dir_for_commit:
            holding = [d for d in self._dirs if subprocess.run(["git", "-C", str(d), "cat-file", "-e", f"{commit}^{{commit}}"],
                                                               capture_output=True, check=False).returncode == 0]
            if not holding:
                given = ", ".join(map(str, self._dirs))
                raise FetchError(f"commit {commit[:12]}: in none of the --git-dir given ({given})")
            self._dir_for_commit[commit] = holding[0]
        git_dir = self._dir_for_commit[commit]
        if git_dir not in self._processes:
            self._processes[git_dir] = subprocess.Popen(["git", "-C", str(git_dir), "cat-file", "--batch"],
                                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self._processes[git_dir]

    def read(self, source: Source, path: str) -> bytes:
        process = self._process_for(source.commit)
        process.stdin.write(f"{source.commit}:{path}\n".encode())
        process.stdin.flush()
        header = process.stdout.readline().decode().split()
        if len(header) != 3:
            raise FetchError(f"{path}: not in commit {source.commit[:12]} of {source.repo} ({' '.join(header)})")
        data = process.stdout.read(int(header[2]))
        process.stdout.read(1)  # the newline after each object
        return data

    def close(self) -> None:
        for process in self._processes.values():
            process.stdin.close()
            process.wait()


class HttpSource:
    def read(self, source: Source, path: str) -> bytes:
        url = f"https://raw.githubusercontent.com/{source.repo}/{source.commit}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"{url}: {exc}") from None

    def close(self) -> None:
        pass


def mot17_classes(gt_path: Path) -> dict[tuple[int, int], int]:
    """{(frame, track id): MOT17 class} from gt.txt's 8th column (already checked by load_mot_csv)."""
    classes = {}
    for line_no, row in enumerate(csv.reader(gt_path.read_text().splitlines()), start=1):
        if row and "".join(row).strip():
            try:
                classes[int(float(row[0])), int(float(row[1]))] = int(float(row[MOT17_CLASS_COLUMN]))
            except (IndexError, ValueError):
                raise FetchError(f"{gt_path}: line {line_no}: no MOT17 object class in column 8") from None
    return classes


def coco_boxes(sequence: Sequence, gt_path: Path, categories: list[str]) -> dict:
    """COCO boxes of `categories` for every frame of the sequence. MOT15 lines are all persons and
    flag-0 lines (ignored regions) are iscrowd; MOT17 lines map through MOT17_TO_COCO."""
    truth = load_mot_csv(gt_path)
    beyond = sorted(f for f in truth if not 1 <= f <= sequence.frames)
    if beyond:
        raise FetchError(f"{gt_path}: boxes for frame {beyond[0]}, outside frames 1-{sequence.frames}")
    classes = mot17_classes(gt_path) if sequence.mot17_classes else {}
    images, annotations = [], []
    for frame in range(1, sequence.frames + 1):
        images.append({"id": frame, "file_name": f"{frame:06d}.jpg", "width": sequence.width,
                       "height": sequence.height, "frame_index": frame - 1})
        for track_id, x, y, w, h, flag in truth.get(frame, []):
            if sequence.mot17_classes:
                category, crowd = MOT17_TO_COCO.get(classes[frame, track_id], (None, 1))
                crowd = crowd or (1 - flag if category == "person" else 0)
            else:
                category, crowd = "person", 0 if flag else 1
            if category in categories:
                annotations.append({"id": len(annotations) + 1, "image_id": frame, "category_id": COCO_IDS[category],
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd, "track_id": track_id})
    if sequence.mot17_classes:
        rule = ("MOT17 classes: pedestrian -> person; person on vehicle, static person, distractor, reflection -> "
                "person iscrowd (ignored); car, bicycle, motorbike -> car, bicycle, motorbike; "
                "non-motorized vehicle and occluders left out")
        what = f"MOTChallenge MOT17 train/{sequence.folder} frames 1-{sequence.frames}"
    else:
        rule = "MOT lines whose 7th field is 0 are iscrowd (ignored)"
        what = f"MOTChallenge 2DMOT2015 train/{sequence.name}"
    boxes = "person boxes" if categories == ["person"] else "boxes"
    return {"info": {"description": f"{what} ground truth as COCO {boxes}; image id = MOT frame, "
                                    f"frame_index = that frame's index in video.avi; {rule}",
                     "licence": sequence.source.licence},
            "images": images, "annotations": annotations,
            "categories": [{"id": COCO_IDS[c], "name": c, "supercategory": "person" if c == "person" else "vehicle"}
                           for c in categories]}


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
        data = verified(name, source.read(sequence.source, f"{sequence.source.root}/{sequence.folder}/img1/"
                                                           f"{frame:06d}.jpg"), pins)
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
    gt = verified(f"{sequence.name}/gt/gt.txt",
                  source.read(sequence.source, f"{sequence.source.root}/{sequence.folder}/gt/gt.txt"), pins)
    (folder / "gt.txt").write_bytes(gt)
    outputs = {"person.json": ["person"]}
    if sequence.mot17_classes:
        outputs["objects.json"] = ["person", "bicycle", "car", "motorbike"]
    for name, categories in outputs.items():
        try:
            annotations = json.dumps(coco_boxes(sequence, folder / "gt.txt", categories)).encode()
        except ConfigError as exc:
            raise FetchError(str(exc)) from None
        (folder / name).write_bytes(verified(f"{sequence.name}/{name}", annotations, pins))
    with tempfile.TemporaryDirectory(dir=folder) as scratch:  # a half-written video never takes video.avi's place
        partial = Path(scratch) / "video.avi"
        write_video(sequence, source, pins, partial)
        partial.replace(folder / "video.avi")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    repos = sorted({s.source.repo for s in SEQUENCES.values()})
    parser.add_argument("--git-dir", type=Path, action="append", default=[],
                        help=f"a local clone or mirror of one of github.com/{{{','.join(repos)}}} (repeatable; "
                             "default: download)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "eval")
    parser.add_argument("--only", action="append", choices=sorted(SEQUENCES), help="this sequence only (repeatable)")
    args = parser.parse_args(argv)
    for git_dir in args.git_dir:
        if not git_dir.is_dir():
            parser.error(f"--git-dir {git_dir}: not a directory")
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
