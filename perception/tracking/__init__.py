"""Multi-object tracking: the one tracker of the pipeline (ByteTrack-style, Kalman motion, IoU matching)."""
