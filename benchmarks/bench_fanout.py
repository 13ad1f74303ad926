"""A lossy capture's send path (`FrameSender`, as for a live camera): its cost per frame, and one sender feeding N
ranks.

Part 1, cost of one send(), in this process: CPU time of the calling thread per `FrameSender.send` of a raw
RGB frame, lossy, one endpoint, in batches of --batch frames, median over --reps batches:
  sent     a PULL in this process takes everything (RCVHWM unbounded, drained between batches, untimed)
  dropped  nothing is bound at the endpoint: every frame is dropped and counted
With `--baseline DIR` (another checkout, e.g. `git archive COMMIT | tar -x -C DIR`), DIR's
agent/robot/transport.py is loaded beside this tree's and the two senders' batches alternate, so both see
the same machine load (its imports resolve to this tree's other modules: compare changes to transport.py).

Part 2, delivery: a sender process flat out for --seconds (lossy, send HWM 64 as in WireConfig) into
  one  one endpoint, a receiver process draining it (FrameReceiver, RCVHWM 256)
  N    N endpoints (--ranks), one draining receiver process each (the fleet's fan-out)
frames received per second (first to last arrival, summed over ranks), frames sent and dropped per second,
and each rank's share; median of --reps trials. With --baseline, case `one` also runs DIR's sender, interleaved.

    python benchmarks/bench_fanout.py [--sides 32 224] [--batch 3000] [--reps 20] [--seconds 2] [--ranks 2] \
        [--baseline DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import zmq

REPO = Path(__file__).resolve().parent.parent
SEND_HWM, RECV_HWM = 64, 256  # WireConfig defaults
END_CAMERA = 0xFFFF


def free_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _frames(side: int, count: int) -> list:
    from agent.core.wire import Frame

    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return [Frame(0, seq, time.time(), image) for seq in range(count)]


def load_transport(tree: Path) -> ModuleType:
    """`tree`'s agent/robot/transport.py as a module of its own name, beside this tree's."""
    spec = importlib.util.spec_from_file_location("baseline_transport", tree / "agent" / "robot" / "transport.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class _SendCost:
    """One lossy sender of a transport module, and (path `sent`) the PULL that takes its frames."""

    def __init__(self, transport: ModuleType, path: str, frames: list) -> None:
        self.frames = frames
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, 0)
        port = self.pull.bind_to_random_port("tcp://127.0.0.1")
        if path == "dropped":
            self.pull.close(linger=0)
            self.pull = None
        self.sender = transport.FrameSender(f"tcp://127.0.0.1:{port}", hwm=len(frames) + 1)
        if self.pull is not None:  # connected before the clock starts
            while not self.sender.send(frames[0]):
                time.sleep(0.001)
            self.pull.recv()
        self.dropped = self.sender.stats.dropped

    def batch(self) -> float:
        """CPU µs of this thread per send() over one batch."""
        start = time.thread_time()
        for frame in self.frames:
            self.sender.send(frame)
        cost = (time.thread_time() - start) / len(self.frames) * 1e6
        if self.pull is not None:
            for _ in self.frames:
                self.pull.recv()
            assert self.sender.stats.dropped == self.dropped, "a frame was dropped on the path that should send"
        return cost

    def close(self) -> None:
        self.sender.close(linger_s=0)
        if self.pull is not None:
            self.pull.close(linger=0)
        self.ctx.term()


def part1(args: argparse.Namespace) -> None:
    from agent.robot import transport

    senders = {"this": transport}
    if args.baseline is not None:
        senders = {"baseline": load_transport(args.baseline), "this": transport}
    print(
        f"== part 1: CPU µs of the calling thread per lossy send(), one endpoint, {args.batch}-frame batches, "
        f"median of {args.reps}"
    )
    for side in args.sides:
        frames = _frames(side, args.batch)
        for path in ("sent", "dropped"):
            costs: dict[str, list[float]] = {name: [] for name in senders}
            runs = {name: _SendCost(module, path, frames) for name, module in senders.items()}
            try:
                for rep in range(args.reps):
                    for name in list(runs) if rep % 2 == 0 else list(reversed(runs)):
                        costs[name].append(runs[name].batch())
            finally:
                for run in runs.values():
                    run.close()
            med = {name: statistics.median(values) for name, values in costs.items()}
            ratio = f"   this/baseline {med['this'] / med['baseline']:5.3f}" if "baseline" in med else ""
            print(
                f"  {side}x{side} {path:7s} " + "  ".join(f"{name} {value:6.2f}" for name, value in med.items()) + ratio
            )


def sender_main(endpoints: list[str], side: int, seconds: float) -> dict:
    """Part 2's sender, in a subprocess running whichever tree is on its path: flat out, then each rank's end."""
    from agent.robot.transport import FrameSender

    frames = _frames(side, 256)
    target = endpoints[0] if len(endpoints) == 1 else endpoints
    with FrameSender(target, hwm=SEND_HWM) as sender:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # every rank is connected before the clock starts
            sender.send(frames[0])
            if min(getattr(sender.stats, "sent_per_endpoint", (sender.stats.sent,))) > 0:
                break
            time.sleep(0.001)
        before, calls, start = sender.stats, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            sender.send(frames[calls % len(frames)])
            calls += 1
        elapsed, after = time.perf_counter() - start, sender.stats
        sender.send_end(END_CAMERA, calls, 10.0)
    return {"sent": (after.sent - before.sent) / elapsed, "dropped": (after.dropped - before.dropped) / elapsed}


def receiver_main(endpoint: str, out: "mp.Queue", ready: "mp.Event") -> None:
    from agent.core.wire import EndOfStream
    from agent.robot.transport import FrameReceiver

    count, first, last = 0, 0.0, 0.0
    with FrameReceiver(endpoint, hwm=RECV_HWM) as receiver:
        ready.set()
        while True:
            message = receiver.recv(30)
            if message is None or isinstance(message, EndOfStream):
                break
            last = time.perf_counter()
            first = first or last
            count += 1
    out.put((endpoint, count, last - first))


def trial(ctx: mp.context.BaseContext, tree: Path, ranks: int, side: int, seconds: float) -> dict:
    """One sender subprocess running `tree`'s code, `ranks` receiver processes running this tree's."""
    endpoints = [free_endpoint() for _ in range(ranks)]
    out, receivers = ctx.Queue(), []
    for endpoint in endpoints:
        ready = ctx.Event()
        receivers.append(ctx.Process(target=receiver_main, args=(endpoint, out, ready)))
        receivers[-1].start()
        ready.wait(60)
    spec = json.dumps({"endpoints": endpoints, "side": side, "seconds": seconds})
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--sender", spec],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"sender from {tree} failed: {result.stderr.strip()[-400:]}")
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    received = sorted(out.get(timeout=60) for _ in receivers)
    for proc in receivers:
        proc.join(30)
    stats["received"] = sum(count / max(span, 1e-9) for _, count, span in received)
    stats["shares"] = [count for _, count, _ in received]
    return stats


def part2(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    print(f"== part 2: a lossy sender flat out for {args.seconds:g} s into draining receivers, median of {args.reps2}")
    for side in args.sides:
        for ranks in (1, args.ranks):
            trees = {"this": REPO}
            if args.baseline is not None and ranks == 1:
                trees = {"baseline": args.baseline.resolve(), "this": REPO}
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for rep in range(args.reps2):
                for name in list(trees) if rep % 2 == 0 else list(reversed(trees)):
                    runs[name].append(trial(ctx, trees[name], ranks, side, args.seconds))
            for name, results in runs.items():
                med = {key: statistics.median(r[key] for r in results) for key in ("received", "sent", "dropped")}
                shares = (
                    ""
                    if ranks == 1
                    else "   shares per trial " + ", ".join("/".join(str(c) for c in r["shares"]) for r in results)
                )
                print(
                    f"  {side}x{side} {ranks} rank(s) {name:8s} received {med['received']:7.0f}/s  "
                    f"sent {med['sent']:7.0f}/s  dropped {med['dropped']:7.0f}/s{shares}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 224], help="square raw RGB frames, px")
    parser.add_argument("--batch", type=int, default=3000, help="part 1: frames per timed batch")
    parser.add_argument("--reps", type=int, default=20, help="part 1: batches per sender and path")
    parser.add_argument("--seconds", type=float, default=2.0, help="part 2: per trial")
    parser.add_argument("--reps2", type=int, default=3, help="part 2: trials per case and tree")
    parser.add_argument("--ranks", type=int, default=2, help="part 2: endpoints of the fan-out case")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout whose transport to compare with")
    parser.add_argument("--skip", choices=("part1", "part2"), default=None)
    parser.add_argument("--sender", default=None, help=argparse.SUPPRESS)  # internal: part 2's sender process
    args = parser.parse_args()
    if args.sender is not None:
        spec = json.loads(args.sender)
        print(json.dumps(sender_main(spec["endpoints"], spec["side"], spec["seconds"])))
        return
    sys.path.insert(0, str(REPO))  # this tree's code here and in the spawned receivers (they inherit sys.path)
    if args.skip != "part1":
        part1(args)
    if args.skip != "part2":
        part2(args)


if __name__ == "__main__":
    main()
