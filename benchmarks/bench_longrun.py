"""Does learning last? The default pipeline from its CLI for hours on a looping real-photo folder.

What a user runs, left alone: `byol-agent capture --source FOLDER/train` streams the photos (unlabelled,
looped with `capture.loop_video`, shuffled each pass with `capture.shuffle`) over ZeroMQ into
`byol-agent train` with the shipped config (configs/default.yaml: constant lr, tau 0.99 -> 0.996, a FIFO
buffer that keeps churning), for `--budget-s` seconds of trainer wall time. Only the probe is pointed at
the photos: `train.probe_data=FOLDER` (kNN bank FOLDER/train, queries FOLDER/test, exactly as `byol-agent
eval` scores them, next to the random-init twin), at most once every `--probe-interval-s`
(`train.probe_min_interval_s`; a probe is asked for at each checkpoint / `train.probe_every` step).

The report is read from the run's metrics.jsonl through trainer/run_records.py (the one metrics reader),
so it can be made at any time, also while the run goes on (`--report-only RUN_DIR`): a plot
(kNN with its running best and the random-init line, embedding std, loss, against steps) and a markdown
table, plus the verdict on the goal of issue 26:

- kNN never falls more than 0.02 below its running best after the first 20 minutes of training, and
- no collapse: the embedding std never drops below `export.collapse_std_min` (the export gate's line) nor
  below half of its own peak (windowed median), after the first 20 minutes.

"Training time" is the trainer's wall time while it trains: the sum of the gaps between consecutive
training lines of metrics.jsonl, gaps over `GAP_S` (a stop and a resume) left out. A rerun with the same
`--run-dir` resumes the trainer (its checkpoint) and counts the time already trained against the budget.

    nice -n 5 python benchmarks/bench_longrun.py --run-dir /tmp/longrun/run --budget-s 7500 --threads 1
    python benchmarks/bench_longrun.py --report-only /tmp/longrun/run --out benchmarks/results/longrun
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from longrun_report import fmt, markdown, plot, summarise, training_clock  # noqa: E402

from agent.core.config import load_config  # noqa: E402
from trainer.run_records import read_metrics  # noqa: E402

# the shared folder next to the checkout (a worktree one level deeper also finds it)
DEV_PHOTOS = next(
    (
        p / "shared" / "data" / "cifar10-dev.tar.gz"
        for p in (ROOT.parent, ROOT.parent.parent)
        if (p / "shared" / "data" / "cifar10-dev.tar.gz").is_file()
    ),
    ROOT.parent / "shared" / "data" / "cifar10-dev.tar.gz",
)
CLI = [sys.executable, "-m", "agent.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_data(spec: Optional[str], work: Path) -> Path:
    """A folder with train/ and test/ class subfolders: `spec`, or the dev photos unpacked under `work`."""
    if spec:
        root = Path(spec)
    else:
        root = work / "cifar10-dev"
        if not (root / "test").is_dir():
            if not DEV_PHOTOS.is_file():
                raise SystemExit(f"bench_longrun: {DEV_PHOTOS} not found; pass --data DIR")
            with tarfile.open(DEV_PHOTOS) as tar:
                tar.extractall(work, filter="data")
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise SystemExit(f"bench_longrun: {root} needs train/<class>/ and test/<class>/ image folders")
    return root


def report(run_dir: Path, out: Path, collapse_std_min: float) -> dict[str, Any]:
    s = summarise(read_metrics(run_dir), collapse_std_min)
    s["trainer_cpu_s"] = trainer_cpu_s(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "longrun.md").write_text(markdown(s, run_dir))
    plot(s, out / "longrun.png")
    return s


# --------------------------------------------------------------------------- running it


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, all threads (Linux /proc); nan when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def trainer_cpu_s(run_dir: Path) -> float:
    """Trainer CPU seconds over every session of this run (the last sample of each trainer pid, summed)."""
    last: dict[int, float] = {}
    try:
        for line in (run_dir / "longrun-cpu.jsonl").read_text().splitlines():
            row = json.loads(line)
            if isinstance(row.get("trainer_cpu_s"), (int, float)) and math.isfinite(row["trainer_cpu_s"]):
                last[int(row["pid"])] = float(row["trainer_cpu_s"])
    except (OSError, ValueError):
        return float("nan")
    return sum(last.values()) if last else float("nan")


def trained_s(run_dir: Path) -> float:
    try:
        run = read_metrics(run_dir)
    except Exception:  # no metrics yet
        return 0.0
    times = np.asarray([float(r["time"]) for r in run.train if isinstance(r.get("time"), (int, float))])
    clock = training_clock(times)
    return float(clock[-1]) if len(clock) else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=Path("/tmp/longrun/run"))
    p.add_argument(
        "--data", default=None, help="folder with train/<class>/ and test/<class>/ (default: the dev photos)"
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/longrun"), help="where the dev photos are unpacked")
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--budget-s", type=float, default=7500.0, help="seconds of trainer wall time while training")
    p.add_argument("--probe-interval-s", type=float, default=180.0, help="train.probe_min_interval_s")
    p.add_argument("--threads", type=int, default=1, help="train.threads (torch intra-op threads)")
    p.add_argument(
        "--report-every-s", type=float, default=900.0, help="rewrite the plot/table this often while running"
    )
    p.add_argument("--out", type=Path, default=None, help="plot/table folder (default RUN_DIR/report)")
    p.add_argument(
        "--report-only", type=Path, default=None, metavar="RUN_DIR", help="only make the plot/table of RUN_DIR"
    )
    p.add_argument("overrides", nargs="*", help="extra config overrides (key=value) for both processes")
    args = p.parse_args(argv)
    collapse_std_min = load_config(args.config, []).export.collapse_std_min

    if args.report_only is not None:
        s = report(args.report_only, args.out or args.report_only / "report", collapse_std_min)
        print(markdown(s, args.report_only))
        return 0 if s["knn_ok"] and s["std_ok"] else 1

    data = prepare_data(args.data, args.work)
    run_dir, out = args.run_dir, args.out or args.run_dir / "report"
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = [f"wire.endpoint=tcp://127.0.0.1:{free_port()}", "wire.publish=null"] + list(args.overrides)
    train = [
        f"train.threads={args.threads}",
        f"train.probe_data={data}",
        f"train.probe_min_interval_s={args.probe_interval_s}",
    ]
    capture = ["capture.loop_video=true", "capture.shuffle=true"]
    logs = [open(run_dir / f"{name}.log", "a") for name in ("trainer", "capture")]
    trainer = subprocess.Popen(
        CLI + ["train", "--run-dir", str(run_dir), "--config", args.config] + overrides + train,
        stdout=logs[0],
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    feeder = subprocess.Popen(
        CLI + ["capture", "--source", str(data / "train"), "--config", args.config] + overrides + capture,
        stdout=logs[1],
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    print(f"bench_longrun: trainer pid {trainer.pid}, capture pid {feeder.pid}, run dir {run_dir}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` stops both children cleanly (finally below)
    cpu_log = run_dir / "longrun-cpu.jsonl"
    rc = 0
    last_report = time.monotonic()
    try:
        while True:
            time.sleep(15)
            if trainer.poll() is not None or feeder.poll() is not None:
                print(
                    f"bench_longrun: trainer rc {trainer.returncode}, capture rc {feeder.returncode}; "
                    f"see {run_dir}/*.log"
                )
                rc = 1
                break
            done = trained_s(run_dir)
            with open(cpu_log, "a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "time": time.time(),
                            "trained_s": done,
                            "trainer_cpu_s": process_cpu_s(trainer.pid),
                            "pid": trainer.pid,
                        }
                    )
                    + "\n"
                )
            if done >= args.budget_s:
                break
            if time.monotonic() - last_report >= args.report_every_s:
                last_report = time.monotonic()
                try:
                    s = report(run_dir, out, collapse_std_min)
                    print(
                        f"bench_longrun: {done / 60:.1f} min trained, {s['steps']} steps, "
                        f"kNN {fmt(s['rows'][-1]['knn']) if s['rows'] else '-'}",
                        flush=True,
                    )
                except Exception as exc:  # a report must never end the run
                    print(f"bench_longrun: report failed: {exc}", flush=True)
    finally:
        for proc in (feeder, trainer):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (trainer, feeder):
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        for log in logs:
            log.close()
    s = report(run_dir, out, collapse_std_min)
    print(markdown(s, run_dir))
    return rc or (0 if s["knn_ok"] and s["std_ok"] else 1)


if __name__ == "__main__":
    sys.exit(main())
