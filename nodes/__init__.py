"""One module per process. Each has main() and a CONFIG type the launcher validates before start."""

import perception  # noqa: E402, F401 - first, before a node module imports cv2: it caps OpenCV's decoding (perception/__init__.py)
