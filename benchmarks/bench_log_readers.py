"""Which library reads robot logs fastest: `mcap` + `mcap-ros2-support` vs `rosbags`, on the same MCAP messages.

One rosbag2 folder (mcap storage, written by rosbags' own writer) of N 640x480 `sensor_msgs/msg/Image` (rgb8)
and N `sensor_msgs/msg/CompressedImage` (JPEG); both libraries read the same .mcap file inside it, decode the
CDR messages and turn them into RGB arrays with the same conversion (agent/robot/robot_log_images.py's
`message_to_rgb`). Prints messages/s for each and the ratio mcap / rosbags, raw and JPEG apart, with and
without the pixel conversion (which costs the same for both).

    nice -n 10 python benchmarks/bench_log_readers.py [--messages 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.core.image_codecs import encode_jpeg  # noqa: E402
from agent.robot.robot_log_images import message_to_rgb  # noqa: E402


def write_bag(folder: Path, n: int) -> Path:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image, Compressed = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/CompressedImage"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    with Writer(folder, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        raw = writer.add_connection("/cam/raw", Image.__msgtype__, typestore=ts)
        jpg = writer.add_connection("/cam/jpeg", Compressed.__msgtype__, typestore=ts)
        for i in range(n):
            t = 1_700_000_000_000_000_000 + i * 33_000_000
            header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="cam")
            image = np.roll(base, i, axis=1)
            msg = Image(
                header=header,
                height=480,
                width=640,
                encoding="rgb8",
                is_bigendian=0,
                step=640 * 3,
                data=image.reshape(-1),
            )
            writer.write(raw, t, ts.serialize_cdr(msg, Image.__msgtype__))
            data = np.frombuffer(encode_jpeg(image, 90), np.uint8)
            writer.write(
                jpg, t, ts.serialize_cdr(Compressed(header=header, format="jpeg", data=data), Compressed.__msgtype__)
            )
    return next(folder.glob("*.mcap"))


def read_mcap(path: Path, topic: str, convert: bool = True) -> int:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    n = 0
    with open(path, "rb") as f:
        for _schema, _channel, _message, msg in make_reader(
            f, decoder_factories=[DecoderFactory()]
        ).iter_decoded_messages(topics=[topic]):
            assert not convert or message_to_rgb(msg).shape == (480, 640, 3)
            n += 1
    return n


def read_rosbags(folder: Path, topic: str, convert: bool = True) -> int:
    from rosbags.highlevel import AnyReader

    n = 0
    with AnyReader([folder]) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, _t, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            assert not convert or message_to_rgb(msg).shape == (480, 640, 3)
            n += 1
    return n


def best_rate(fn, *args, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bag"
        mcap_file = write_bag(folder, args.messages)
        for topic in ("/cam/raw", "/cam/jpeg"):
            for convert in (False, True):
                a = best_rate(read_mcap, mcap_file, topic, convert)
                b = best_rate(read_rosbags, folder, topic, convert)
                what = "decoded to RGB" if convert else "messages decoded"
                print(f"{topic} {what}: mcap+mcap-ros2-support {a:.0f} msg/s, rosbags {b:.0f} msg/s, ratio {a / b:.2f}")


if __name__ == "__main__":
    main()
