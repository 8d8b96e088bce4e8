"""Accuracy evaluation: COCO-style average precision and detector evaluation on annotated video."""

from perception import REPO

# The development clip: PETS09-S2L1 frames 1-400 with their ground truth (recordings/README.md).
# Frames 401-795 are withheld on purpose; nothing here is tuned on them.
DEV_VIDEO = REPO / "recordings" / "pets09_vtest_dev.avi"
DEV_ANNOTATIONS = REPO / "recordings" / "pets09_dev_person.json"  # COCO person boxes
DEV_MOT = REPO / "recordings" / "pets09_dev_gt.txt"  # MOT csv
