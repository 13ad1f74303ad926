"""Frames/s decoded per source kind at 640x480, against a plain OpenCV read of the same frames, in one run.

The frames: a virtual camera panning and zooming over two real photographs that scikit-learn ships
(`load_sample_image`: "china.jpg" and "flower.jpg", 427x640), `--frames` frames at 640x480, half over each.
The same frames are written as:
  opencv        an MJPG .avi by cv2.VideoWriter (the baseline: cv2.VideoCapture.read + BGR->RGB, nothing else)
  mcap-jpeg     MCAP, ROS 2 sensor_msgs/msg/CompressedImage, JPEG quality 80 (compressed_image_transport's default)
  mcap-bayer    MCAP, ROS 2 sensor_msgs/msg/Image, bayer_rggb8 (a raw camera driver's output)
  rosbag2       a rosbag2 folder (sqlite3 storage), CompressedImage JPEG 80
  lerobot-av1   a LeRobot v3.0 dataset, one camera, AV1 by libsvtav1 (LeRobot's default: preset 12, g 2, crf 30)
  lerobot-h264  the same with libx264 (LeRobot's "h264": g 2, crf 30)
MCAP and rosbag2 are written with rosbags' CDR serialiser (mcap.Writer, rosbags.rosbag2.Writer), as a ROS 2
recorder writes them. Each kind is read through `agent.robot.sources.open_source` when the registry opens it
(connects and delivers a frame), else through the libraries directly, as the readers call them: `mcap` +
`mcap_ros2.decoder.DecoderFactory`, `rosbags.highlevel.AnyReader`, `rosbags.image.message_to_cvimage`
(for LeRobot: agent/robot/lerobot_dataset.py's `open_lerobot`); the output says which. Every kind delivers
uint8 HxWx3 RGB; its mean |difference| to the source frames is printed (codec loss, and a check that the
right frames came out). Rounds are interleaved (`--reps`), medians reported.

Then the trainer's consumption at the default config (configs/default.yaml), measured here: steps/s of the
real train step (trainer.train_step.TrainStep) on batches of capture-sized frames, and
frames/s needed = steps/s x batch_size / replay_ratio (each frame gets `train.replay_ratio` updates). A
decoder below that rate would starve the trainer (one source; capture reads each source on its own thread).

    nice -n 10 python benchmarks/bench_sources.py [--frames 240] [--reps 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.core.config import CaptureConfig, load_config  # noqa: E402
from agent.core.errors import SourceError  # noqa: E402
from agent.robot.lerobot_dataset import open_lerobot  # noqa: E402
from agent.robot.sources import SourceExhausted, open_source  # noqa: E402
from tests.agent.lerobot_writer import write_dataset  # noqa: E402

H, W = 480, 640
JPEG_QUALITY = 80
FPS = 30
KEY = "observation.images.front"
TOPIC = "/camera/image"


def pan_frames(n: int) -> list[np.ndarray]:
    """`n` RGB 640x480 frames: a camera panning and zooming over "china.jpg", then over "flower.jpg"."""
    from sklearn.datasets import load_sample_image

    frames = []
    for part, name in enumerate(("china.jpg", "flower.jpg")):
        photo = load_sample_image(name)  # RGB 427x640
        ph, pw = photo.shape[:2]
        count = n // 2 + (n % 2 if part else 0)
        for t in np.linspace(0.0, 1.0, count):
            zoom = 1.6 + 0.4 * t  # output pixels per photo pixel: always upscaled, as a close-up camera sees
            side_w, side_h = W / zoom, H / zoom
            x0, y0 = (pw - side_w) * (0.1 + 0.8 * t), (ph - side_h) * (0.8 - 0.6 * t)
            m = np.array([[zoom, 0, -x0 * zoom], [0, zoom, -y0 * zoom]], np.float32)
            frames.append(cv2.warpAffine(photo, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


def _bayer_rggb(rgb: np.ndarray) -> np.ndarray:
    """The RGGB mosaic a Bayer sensor would record for `rgb`: R at (even, even), B at (odd, odd), G elsewhere."""
    mosaic = rgb[:, :, 1].copy()
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


def _ros_messages(frames: list[np.ndarray], kind: str) -> Iterator[tuple[int, str, object]]:
    """(log time ns, ROS 2 type name, rosbags message) per frame; `kind` "jpeg" or "bayer"."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    header_t, time_t = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    for i, rgb in enumerate(frames):
        ns = 1_700_000_000 * 10**9 + i * 10**9 // FPS
        header = header_t(stamp=time_t(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="camera")
        if kind == "jpeg":
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            msg = store.types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=data.reshape(-1))
            yield ns, "sensor_msgs/msg/CompressedImage", msg
        else:
            data = _bayer_rggb(rgb).reshape(-1)
            msg = store.types["sensor_msgs/msg/Image"](
                header=header, height=H, width=W, encoding="bayer_rggb8", is_bigendian=0, step=W, data=data
            )
            yield ns, "sensor_msgs/msg/Image", msg


def write_mcap(path: Path, frames: list[np.ndarray], kind: str) -> None:
    from mcap.writer import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start(profile="ros2", library="bench_sources")
        channel = None
        for ns, typename, msg in _ros_messages(frames, kind):
            if channel is None:
                text, _ = store.generate_msgdef(typename, ros_version=2)
                schema = writer.register_schema(typename, "ros2msg", text.encode())
                channel = writer.register_channel(TOPIC, "cdr", schema)
            writer.add_message(channel, log_time=ns, publish_time=ns, data=bytes(store.serialize_cdr(msg, typename)))
        writer.finish()


def write_rosbag2(path: Path, frames: list[np.ndarray]) -> None:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    with Writer(path, version=8) as writer:
        connection = None
        for ns, typename, msg in _ros_messages(frames, "jpeg"):
            if connection is None:
                connection = writer.add_connection(TOPIC, typename, typestore=store)
            writer.write(connection, ns, bytes(store.serialize_cdr(msg, typename)))


def write_avi(path: Path, frames: list[np.ndarray]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()


# -- readers: each yields RGB frames ------------------------------------------------------------------


def read_opencv(path: Path) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def read_mcap(path: Path) -> Iterator[np.ndarray]:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.image import message_to_cvimage

    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for _schema, _channel, _message, msg in reader.iter_decoded_messages(topics=[TOPIC]):
            yield message_to_cvimage(msg, "rgb8")


def read_rosbag2(path: Path) -> Iterator[np.ndarray]:
    from rosbags.highlevel import AnyReader
    from rosbags.image import message_to_cvimage

    with AnyReader([path]) as reader:
        connections = [c for c in reader.connections if c.topic == TOPIC]
        for connection, _ns, raw in reader.messages(connections=connections):
            yield message_to_cvimage(reader.deserialize(raw, connection.msgtype), "rgb8")


def read_source(source) -> Iterator[np.ndarray]:
    with source:
        while True:
            try:
                yield source.read()
            except SourceExhausted:
                return


def through_registry(spec: str, count: int) -> bool:
    """True if `open_source` reads `spec` whole: it connects and delivers its `count` frames at 640x480.

    (On main, OpenCV's FFmpeg opens a JPEG MCAP as a video and finds some of its JPEGs: measured, 19 of 48.)"""
    quiet = logging.getLogger("agent.robot")
    level, quiet.level = quiet.level, logging.ERROR  # the misread's own warnings (skipped frames) are not news here
    try:
        frames = list(read_source(open_source(spec, CaptureConfig())))
    except SourceError:
        return False
    finally:
        quiet.setLevel(level)
    return len(frames) == count and all(f.shape[:2] == (H, W) for f in frames)


def time_reader(make: Callable[[], Iterator[np.ndarray]], frames: list[np.ndarray]) -> tuple[float, int, float]:
    """(frames/s, frames delivered, mean |diff| to the source over every 16th frame)."""
    count, diffs = 0, []
    t0 = time.perf_counter()
    for i, image in enumerate(make()):
        count += 1
        if i % 16 == 0 and i < len(frames) and image.shape == frames[i].shape:
            diffs.append(float(np.abs(image.astype(np.int16) - frames[i].astype(np.int16)).mean()))
    elapsed = time.perf_counter() - t0
    return count / elapsed, count, statistics.fmean(diffs) if diffs else float("nan")


def trainer_need(frames: list[np.ndarray], steps: int) -> tuple[float, float, int, float]:
    """(steps/s, frames/s needed, batch, replay_ratio) of the default config's train step on this machine."""
    import torch

    from agent.core.frames import fit_frame
    from trainer.learner_factory import build_learner, build_optimizer
    from trainer.train_step import TrainStep

    cfg = load_config()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    learner = build_learner(cfg.model, cfg.train, "cpu", cfg.augment)
    step = TrainStep(learner, build_optimizer(learner, cfg.train), cfg.train, torch.device("cpu"))
    small = np.stack([fit_frame(f, cfg.capture.height, cfg.capture.width, cfg.capture.resize) for f in frames])
    pool = torch.from_numpy(small)
    gen = torch.Generator().manual_seed(0)
    batch = cfg.train.batch_size

    def one() -> None:
        step(pool[torch.randint(0, len(pool), (batch,), generator=gen)])

    for _ in range(3):
        one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    rate = steps / (time.perf_counter() - t0)
    return rate, rate * batch / cfg.train.replay_ratio, batch, cfg.train.replay_ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="train steps timed for the trainer's consumption")
    args = parser.parse_args(argv)
    os.environ.setdefault("SVT_LOG", "1")

    frames = pan_frames(args.frames)
    work = Path(tempfile.mkdtemp(prefix="bench-sources-"))
    t0 = time.perf_counter()
    write_avi(work / "pan.avi", frames)
    write_mcap(work / "jpeg.mcap", frames, "jpeg")
    write_mcap(work / "bayer.mcap", frames, "bayer")
    write_rosbag2(work / "rosbag2", frames)
    write_dataset(work / "lerobot-av1", "v3.0", {KEY: [frames]}, {KEY: "libsvtav1"}, fps=FPS)
    write_dataset(work / "lerobot-h264", "v3.0", {KEY: [frames]}, {KEY: "libx264"}, fps=FPS)
    print(f"wrote {args.frames} frames {W}x{H} per kind in {time.perf_counter() - t0:.1f} s under {work}")

    library = {
        "mcap-jpeg": lambda: read_mcap(work / "jpeg.mcap"),
        "mcap-bayer": lambda: read_mcap(work / "bayer.mcap"),
        "rosbag2": lambda: read_rosbag2(work / "rosbag2"),
        "lerobot-av1": lambda: read_source(open_lerobot(f"{work / 'lerobot-av1'}#{KEY}", CaptureConfig())),
        "lerobot-h264": lambda: read_source(open_lerobot(f"{work / 'lerobot-h264'}#{KEY}", CaptureConfig())),
    }
    specs = {
        "mcap-jpeg": str(work / "jpeg.mcap"),
        "mcap-bayer": str(work / "bayer.mcap"),
        "rosbag2": str(work / "rosbag2"),
        "lerobot-av1": f"{work / 'lerobot-av1'}#{KEY}",
        "lerobot-h264": f"{work / 'lerobot-h264'}#{KEY}",
    }
    readers: dict[str, Callable[[], Iterator[np.ndarray]]] = {"opencv": lambda: read_opencv(work / "pan.avi")}
    how = {"opencv": "cv2.VideoCapture (baseline)"}
    for kind, spec in specs.items():
        if through_registry(spec, len(frames)):
            readers[kind] = lambda spec=spec: read_source(open_source(spec, CaptureConfig()))
            how[kind] = "open_source (the registry)"
        else:
            readers[kind] = library[kind]
            lerobot = kind.startswith("lerobot")
            how[kind] = (
                "open_lerobot (agent/robot/lerobot_dataset.py; not in the registry)"
                if lerobot
                else "the libraries directly (the registry does not open it)"
            )
    sizes = {
        "opencv": (work / "pan.avi").stat().st_size,
        "mcap-jpeg": (work / "jpeg.mcap").stat().st_size,
        "mcap-bayer": (work / "bayer.mcap").stat().st_size,
        "rosbag2": sum(p.stat().st_size for p in (work / "rosbag2").rglob("*") if p.is_file()),
        "lerobot-av1": sum(p.stat().st_size for p in (work / "lerobot-av1" / "videos").rglob("*.mp4")),
        "lerobot-h264": sum(p.stat().st_size for p in (work / "lerobot-h264" / "videos").rglob("*.mp4")),
    }

    rates: dict[str, list[float]] = {k: [] for k in readers}
    ratios: dict[str, list[float]] = {k: [] for k in readers}
    counts, diffs = {}, {}
    for _ in range(args.reps):
        base = None
        for kind, make in readers.items():
            rate, counts[kind], diffs[kind] = time_reader(make, frames)
            rates[kind].append(rate)
            base = rate if kind == "opencv" else base
            ratios[kind].append(rate / base)

    steps_s, need, batch, ratio = trainer_need(frames, args.steps)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"load {os.getloadavg()[0]:.1f}; {args.frames} frames {W}x{H}, {args.reps} interleaved rounds"
    )
    print(
        f"trainer at the default config: {steps_s:.2f} steps/s x batch {batch} / replay_ratio {ratio:g} "
        f"= {need:.0f} frames/s needed"
    )
    print(
        f"{'kind':13} {'frames/s':>9} {'vs opencv':>9} {'vs need':>8} {'frames':>6} {'|diff|':>6} {'MB':>6}  "
        "read through"
    )
    for kind in readers:
        med = statistics.median(rates[kind])
        print(
            f"{kind:13} {med:9.0f} {statistics.median(ratios[kind]):8.2f}x {med / need:7.1f}x {counts[kind]:6d} "
            f"{diffs[kind]:6.2f} {sizes[kind] / 1e6:6.1f}  {how[kind]}"
        )
    starved = [k for k in readers if statistics.median(rates[k]) < need]
    print("starved by: " + (", ".join(starved) or "none (each kind decodes faster than the trainer uses frames)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
