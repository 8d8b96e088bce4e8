"""Accuracy evaluation: COCO-style average precision and detector evaluation on annotated video."""
