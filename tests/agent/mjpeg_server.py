"""A loopback HTTP MJPEG server (what an IP camera serves), for OpenCV's FFmpeg reader in tests.

Each accepted connection gets the HTTP header of a `multipart/x-mixed-replace` stream and then JPEG
parts at `fps`. `plan` says how many frames each connection gets before it is held open silently
(a stalled camera): entry i for connection i, the last entry for every later one; None = frames until
the client goes. Assign a new `plan` while it runs to change what the next connections get.
Measured on OpenCV 5.0 (FFmpeg backend): `cv2.VideoCapture("http://127.0.0.1:PORT/video.mjpg")` reads
these parts as frames.
"""

from __future__ import annotations

import socket
import threading
from typing import Optional

import cv2
import numpy as np

BOUNDARY = b"frame"


class MjpegServer:
    """Serves on 127.0.0.1:`port` (0: any free port) from `start()` until `close()`."""

    def __init__(self, port: int = 0, plan: Optional[list[Optional[int]]] = None, fps: float = 30.0) -> None:
        self.plan: list[Optional[int]] = plan if plan is not None else [None]
        self.connections = 0
        self._period = 1.0 / fps
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/video.mjpg"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "MjpegServer":
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self._spawn(self._accept_loop)
        return self

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._sock.close()

    def __enter__(self) -> "MjpegServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            plan = self.plan
            frames = plan[min(self.connections, len(plan) - 1)]
            self.connections += 1
            self._spawn(self._serve, conn, frames)

    def _serve(self, conn: socket.socket, frames: Optional[int]) -> None:
        with conn:
            try:
                conn.settimeout(2.0)
                conn.recv(4096)  # the client's GET request
                conn.sendall(
                    b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=" + BOUNDARY + b"\r\n\r\n"
                )
                sent = 0
                while not self._stop.is_set() and (frames is None or sent < frames):
                    image = np.full((48, 64, 3), (7 * sent) % 250, np.uint8)
                    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                    head = b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (BOUNDARY, len(jpeg))
                    conn.sendall(head + jpeg + b"\r\n")
                    sent += 1
                    self._stop.wait(self._period)
                self._stop.wait()  # stalled: the connection stays open and silent until the server closes
            except OSError:  # the client went away
                return
