"""Ingest over ZeroMQ on loopback: our wire + transport against the transport floor and imageZMQ's pattern.

Part 1, throughput and capture→buffer latency, 224×224 and 640×480 raw RGB frames, each sender in
its own process and the receiver here, decoding into a preallocated numpy slot:
  floor   plain pyzmq PUSH/PULL of the same bytes (8-byte timestamp + pixels), same HWMs as ours
  ours    FrameSender(lossless) → FrameReceiver: header encode, validate, decode
  curve   ours with CURVE keys (agent/robot/curve.py: encrypted, ZAP-authenticated), the cost of leaving loopback
  reqrep  imageZMQ-style two-part REQ/REP (JSON {dtype, shape} + bytes; the sender waits for "OK")
Throughput: senders go flat out for --seconds. Latency: senders paced at --rate Hz (well below
capacity, so it is the per-frame cost, not queueing); time.time() at send → after the copy into the
slot. Trials of the methods are interleaved, --reps times, and the median is reported; "curve/ours"
is CURVE's throughput and latency relative to plain TCP in the same run.

Part 2, slow subscriber: a 640×480 source at 30 fps and a consumer at 10 Hz for --slow-seconds,
ours (single-frame PUB + SUB keeping the newest frame per camera, `LatestFrameSubscriber`) and the peer's default
PUB/SUB
multipart, run side by side: the age of the frame each consumer gets and the consumer's RSS.

    python benchmarks/bench_ingest.py [--seconds 2] [--reps 3] [--rate 100] [--slow-seconds 20]
    python benchmarks/bench_ingest.py --skip part2 --jpeg 90   # ours vs curve only, JPEG of a real photo

`--jpeg Q` sends JPEG (quality Q) of a real photograph (scikit-learn's sample "china.jpg", centre-cropped
to the frame size) instead of raw noise, ours and curve only: what a capture with
`capture.jpeg_quality` sends over a wire that leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import psutil
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.core.config import WireConfig  # noqa: E402
from agent.core.wire import Frame  # noqa: E402
from agent.robot.curve import WireSecurity, create_keys  # noqa: E402
from agent.robot.subscriber import LatestFrameSubscriber  # noqa: E402
from agent.robot.transport import FrameReceiver, FrameSender  # noqa: E402

SIZES = [(224, 224), (480, 640)]
METHODS = ["floor", "ours", "curve", "reqrep"]
KEYS = Path(__import__("tempfile").mkdtemp(prefix="bench-ingest-keys-"))
END_CAMERA = 0xFFFF
SLOTS = 16
SEND_HWM, RECV_HWM = 64, 256  # WireConfig defaults; the floor uses them too, so only the protocol differs


def free_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


class _Pace:
    def __init__(self, rate: float) -> None:
        self.period = 1.0 / rate if rate else 0.0
        self.next = time.monotonic()

    def wait(self) -> None:
        if self.period:
            self.next += self.period
            time.sleep(max(0.0, self.next - time.monotonic()))


def make_keys(folder: Path) -> None:
    """A trainer and a robot key pair, the robot's public key authorised: what `byol-agent keys` makes."""
    create_keys(folder, "trainer")
    create_keys(folder, "robot")
    (folder / "authorized").mkdir()
    (folder / "authorized" / "robot.key").write_bytes((folder / "robot.key").read_bytes())


def security(method: str, side: str, folder: Path) -> WireSecurity:
    if method != "curve":
        return WireSecurity()
    if side == "sender":
        wire = WireConfig(secret_key=str(folder / "robot.key_secret"), trainer_key=str(folder / "trainer.key"))
    else:
        wire = WireConfig(secret_key=str(folder / "trainer.key_secret"), authorized_keys=str(folder / "authorized"))
    return WireSecurity.from_config(wire)


def _photo(h: int, w: int) -> np.ndarray:
    from sklearn.datasets import load_sample_image

    from agent.core.frames import fit_frame

    return fit_frame(load_sample_image("china.jpg"), h, w)


def send_main(
    method: str,
    endpoint: str,
    h: int,
    w: int,
    seconds: float,
    rate: float,
    keys: Path = KEYS,
    jpeg: Optional[int] = None,
) -> None:
    """One sender process: flat out (rate 0) or paced, for `seconds`, then an end marker."""
    image = _image(h, w) if jpeg is None else _photo(h, w)
    pace = _Pace(rate)
    if method in ("ours", "curve"):
        with FrameSender(endpoint, hwm=SEND_HWM, lossless=True, security=security(method, "sender", keys)) as sender:
            end, seq = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                pace.wait()
                sender.send(Frame(0, seq, time.time(), image), jpeg)
                seq += 1
            sender.send(Frame(END_CAMERA, seq, time.time(), image), jpeg)
        return
    ctx = zmq.Context()
    if method == "floor":
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.connect(endpoint)
        payload = bytearray(8 + image.nbytes)
        payload[8:] = image.tobytes()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pace.wait()
            struct.pack_into("<d", payload, 0, time.time())
            sock.send(payload)
        sock.send(b"E")
    else:
        sock = ctx.socket(zmq.REQ)
        sock.connect(endpoint)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pace.wait()
            sock.send_json({"dtype": "uint8", "shape": [h, w, 3], "t": time.time()}, zmq.SNDMORE)
            sock.send(image, copy=False)
            sock.recv()
        sock.send_json({"end": True})
        sock.recv()
    sock.close(linger=5000)
    ctx.term()


def receive(method: str, endpoint: str, h: int, w: int) -> tuple[int, float, list[float]]:
    """Bind, then take frames into preallocated slots until the end marker: (count, seconds, latencies)."""
    slots = np.empty((SLOTS, h, w, 3), np.uint8)
    latencies: list[float] = []
    first = last = 0.0
    count = 0
    if method in ("ours", "curve"):
        with FrameReceiver(endpoint, hwm=RECV_HWM, security=security(method, "receiver", KEYS)) as receiver:
            while True:
                frame = receiver.recv(20)
                if frame is None:
                    raise RuntimeError("ours: sender went silent")
                if frame.camera_id == END_CAMERA:
                    break
                np.copyto(slots[count % SLOTS], frame.image)
                now = time.time()
                latencies.append(now - frame.timestamp)
                first = first or time.perf_counter()
                last = time.perf_counter()
                count += 1
        return count, last - first, latencies
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL if method == "floor" else zmq.REP)
    sock.setsockopt(zmq.RCVHWM, RECV_HWM)
    sock.bind(endpoint)
    sock.setsockopt(zmq.RCVTIMEO, 20000)
    try:
        while True:
            if method == "floor":
                msg = sock.recv(copy=False)
                if len(msg) == 1:
                    break
                buf = msg.buffer
                (sent_at,) = struct.unpack_from("<d", buf, 0)
                np.copyto(slots[count % SLOTS], np.frombuffer(buf, np.uint8, offset=8).reshape(h, w, 3))
            else:
                parts = sock.recv_multipart(copy=False)
                md = json.loads(parts[0].bytes)
                if md.get("end"):
                    sock.send(b"OK")
                    break
                image = np.frombuffer(parts[1].buffer, dtype=md["dtype"]).reshape(md["shape"])
                np.copyto(slots[count % SLOTS], image)
                sent_at = md["t"]
                sock.send(b"OK")
            latencies.append(time.time() - sent_at)
            first = first or time.perf_counter()
            last = time.perf_counter()
            count += 1
    finally:
        sock.close(linger=0)
        ctx.term()
    return count, last - first, latencies


def trial(
    ctx: mp.context.BaseContext, method: str, h: int, w: int, seconds: float, rate: float, jpeg: Optional[int] = None
):
    endpoint = free_endpoint()
    proc = ctx.Process(target=send_main, args=(method, endpoint, h, w, seconds, rate, KEYS, jpeg))
    proc.start()
    try:
        return receive(method, endpoint, h, w)
    finally:
        proc.join(30)


def part1(args: argparse.Namespace, ctx: mp.context.BaseContext) -> None:
    print(f"== throughput ({args.seconds:g} s flat out) and latency (paced {args.rate:g} Hz), median of {args.reps}")
    for h, w in SIZES:
        fps = {m: [] for m in METHODS}
        lat = {m: [] for m in METHODS}
        for rep in range(args.reps):
            order = METHODS[rep % len(METHODS) :] + METHODS[: rep % len(METHODS)]
            for method in order:
                count, elapsed, _ = trial(ctx, method, h, w, args.seconds, 0.0, args.jpeg)
                fps[method].append(count / elapsed)
            for method in order:
                _, _, latencies = trial(ctx, method, h, w, args.seconds, args.rate, args.jpeg)
                lat[method].extend(latencies)
        floor = statistics.median(fps["floor" if "floor" in fps else "ours"])
        base = "floor" if "floor" in fps else "ours"
        print(
            f"-- {w}x{h} "
            + (f"JPEG q{args.jpeg} of a photo" if args.jpeg else f"raw RGB ({h * w * 3 / 1e3:.0f} kB/frame)")
        )
        p50s = {}
        for method in METHODS:
            f = statistics.median(fps[method])
            p50, p99 = np.percentile(np.array(lat[method]) * 1e3, [50, 99])
            p50s[method] = p50
            print(
                f"  {method:7s} {f:8.0f} frames/s  ({f / floor:4.2f}x {base})   "
                f"latency p50 {p50:6.2f} ms  p99 {p99:6.2f} ms   runs: {', '.join(f'{x:.0f}' for x in fps[method])}"
            )
        ours, curve = statistics.median(fps["ours"]), statistics.median(fps["curve"])
        print(
            f"  curve/ours: throughput {curve / ours:4.2f}x (cost {1 - curve / ours:+.0%}), "
            f"latency p50 {p50s['curve'] / p50s['ours']:4.2f}x"
        )


def slow_publisher(kind: str, endpoint: str, seconds: float) -> None:
    image = _image(480, 640)
    pace = _Pace(30.0)
    end, seq = time.monotonic() + seconds, 0
    if kind == "ours":
        with FrameSender(free_endpoint(), hwm=4, publish=endpoint) as sender:  # no trainer: PUSH drops
            while time.monotonic() < end:
                pace.wait()
                sender.send(Frame(0, seq, time.time(), image))
                seq += 1
        return
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.bind(endpoint)
    while time.monotonic() < end:
        pace.wait()
        sock.send_json({"dtype": "uint8", "shape": [480, 640, 3], "t": time.time()}, zmq.SNDMORE)
        sock.send(image, copy=False)
        seq += 1
    sock.close(linger=0)
    ctx.term()


def slow_consumer(kind: str, endpoint: str, seconds: float, out: mp.Queue) -> None:
    proc = psutil.Process()
    samples = []
    pace = _Pace(10.0)
    end = time.monotonic() + seconds
    if kind == "ours":
        sub = LatestFrameSubscriber(endpoint)
        while time.monotonic() < end:
            pace.wait()
            frame = sub.latest(1.0)
            if frame is not None:
                samples.append((time.monotonic(), time.time() - frame.timestamp, proc.memory_info().rss))
        sub.close()
    else:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        sock.setsockopt(zmq.RCVTIMEO, 1000)
        while time.monotonic() < end:
            pace.wait()
            try:
                md = sock.recv_json()
                image = np.frombuffer(sock.recv(copy=False).buffer, dtype=md["dtype"]).reshape(md["shape"])
            except zmq.Again:
                continue
            assert image.shape == (480, 640, 3)
            samples.append((time.monotonic(), time.time() - md["t"], proc.memory_info().rss))
        sock.close(linger=0)
        ctx.term()
    out.put((kind, samples))


def part2(args: argparse.Namespace, ctx: mp.context.BaseContext) -> None:
    print(f"== slow subscriber: 640x480 at 30 fps in, consumer at 10 Hz, {args.slow_seconds:g} s, side by side")
    out = ctx.Queue()
    procs = []
    for kind in ("ours", "peer"):
        endpoint = free_endpoint()
        procs.append(ctx.Process(target=slow_consumer, args=(kind, endpoint, args.slow_seconds + 1, out)))
        procs.append(ctx.Process(target=slow_publisher, args=(kind, endpoint, args.slow_seconds + 2)))
    for proc in procs:
        proc.start()
    results = dict(out.get(timeout=args.slow_seconds + 60) for _ in range(2))
    for proc in procs:
        proc.join(30)
    for kind in ("ours", "peer"):
        samples = results[kind]
        t0 = samples[0][0]
        tail = [age for t, age, _ in samples if t - t0 >= args.slow_seconds - 2]
        print(
            f"  {kind:5s} frames seen {len(samples):4d}  "
            f"newest-frame age: median over last 2 s {statistics.median(tail):6.3f} s, "
            f"max {max(a for _, a, _ in samples):6.3f} s   consumer RSS: first {samples[0][2] / 2**20:5.0f} MB, "
            f"last {samples[-1][2] / 2**20:5.0f} MB"
        )
        marks = [samples[min(len(samples) - 1, int(len(samples) * q))] for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
        points = "  ".join(f"({t - t0:.0f}, {a:.2f}, {r / 2**20:.0f})" for t, a, r in marks)
        print(f"        over time (s, age s, RSS MB): {points}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per trial")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="paced rate for the latency trials")
    parser.add_argument("--slow-seconds", type=float, default=20.0)
    parser.add_argument("--skip", choices=("part1", "part2"), default=None)
    parser.add_argument("--jpeg", type=int, default=None, help="part 1: ours and curve send JPEG of a real photo")
    args = parser.parse_args()
    if args.jpeg is not None:
        METHODS[:] = ["ours", "curve"]
    ctx = mp.get_context("spawn")
    make_keys(KEYS)
    if args.skip != "part1":
        part1(args, ctx)
    if args.skip != "part2":
        part2(args, ctx)


if __name__ == "__main__":
    main()
