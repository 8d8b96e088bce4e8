"""A real MJPEG stream for tests: an HTTP server on 127.0.0.1 serving multipart/x-mixed-replace JPEG
frames, as IP cameras do, read by OpenCV's FFmpeg backend exactly as a camera's would be."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2

from perception.sources import SyntheticSource

BOUNDARY = b"frame"


class MjpegServer:
    """Serves an endless stream of numbered synthetic frames (perception.sources.read_frame_index
    reads the number back) at `fps` on http://127.0.0.1:PORT/stream.mjpg until stopped."""

    def __init__(self, port: int = 0, fps: float = 20.0, width: int = 160, height: int = 120) -> None:
        self.fps, self.width, self.height = fps, width, height
        self.stopping = threading.Event()
        self.served = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
                self.end_headers()
                source = SyntheticSource(outer.width, outer.height, outer.fps, None, False)
                try:
                    while not outer.stopping.is_set():
                        frame, _ = source.read()
                        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
                        part = jpeg.tobytes()
                        self.wfile.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(part)).encode() + b"\r\n\r\n" + part + b"\r\n")
                        outer.served += 1
                        time.sleep(1.0 / outer.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and drop every client, as a camera that goes away does."""
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "MjpegServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
