"""The `tensorboard` metrics sink: event files in RUN_DIR/tensorboard/ (`tensorboard --logdir runs/`).

Each record becomes one event of scalars at its "step" (`scalars` below lists the tags): training
windows (loss, lr, tau, embedding std, images/s, buffer fill, frames received per camera), the
online probe next to its random-init value (`probe/knn`, `probe/knn_random_init`, one chart of both
in the Custom Scalars tab), and each export's version and drift (`export/version`, `export/r2_prev`,
`export/cka_prev`, `export/cka_vP` to each pinned version P), and each health warning (a falling
probe, a collapsing embedding: `health/<kind>` 1 when it starts, 0 when it clears, and its message in
the Text tab under `warnings`); image grids are image events. A
resumed run writes a new event file into the same folder that starts with a session start at the
step after its checkpoint, so TensorBoard continues the curves and drops what an earlier process
logged beyond the checkpoint it resumed from (what `SummaryWriter(purge_step=...)` writes).

The events are built and framed by TensorBoard's and torch's own code (`event_pb2.Event`,
`torch.utils.tensorboard.summary`, tensorboard's `RecordWriter`), but written on the caller's thread
and flushed per record, not by `SummaryWriter`'s background thread: that thread dies on its first
OSError (a full disk), prints a traceback into the trainer's log, and stays dead; here the error
reaches `MetricsWriter`, which counts it and later reopens the sink as a new event file (TensorBoard
reads every file of the folder, and a record cut short can only end a file).
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard.summary import custom_scalars, image, scalar, text

from trainer.sinks import MetricsSink, close_quietly

TENSORBOARD_DIR = "tensorboard"
FLUSH_S = 10.0

# Training-window fields (trainer/run_monitor.py) and their tags.
TRAINING_TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "tau": "train/tau",
    "embedding_std": "train/embedding_std",
    "img_per_s": "train/images_per_s",
    "steps_per_s": "train/steps_per_s",
    "nan_skips": "train/nan_skips",
    "restores": "train/restores",
    "buffer_fill": "buffer/fill",
    "buffer_size": "buffer/frames",
    "buffer_evictions": "buffer/evictions",
    "buffer_age_mean_s": "buffer/age_mean_s",
    "buffer_age_max_s": "buffer/age_max_s",
    "frames_in": "frames/received",
    "frames_dropped": "frames/dropped",
    "connections_refused": "frames/connections_refused",
}
PER_KEY = {"frames_per_camera": "frames/camera_", "buffer_per_camera": "buffer/camera_"}
PER_RANK = {"frames_in_per_rank": "frames/rank_", "buffer_fill_per_rank": "buffer/fill_rank_"}
EVAL_TAGS = {  # trainer.feature_probes.EvalResult.to_event()
    "knn_top1": "probe/knn",
    "random_knn_top1": "probe/knn_random_init",
    "linear_top1": "probe/linear",
    "random_linear_top1": "probe/linear_random_init",
}
EXPORT_TAGS = {
    "version": "export/version",
    "r2": "export/r2_prev",
    "cka_prev": "export/cka_prev",
}  # export.drift_gate.drift_record
LAYOUT = {
    "probe": {
        "kNN top-1 vs random init": ["Multiline", ["probe/knn", "probe/knn_random_init"]],
        "linear top-1 vs random init": ["Multiline", ["probe/linear", "probe/linear_random_init"]],
    },
    "export": {"drift": ["Multiline", ["export/r2_prev", "export/cka_prev", "export/cka_v"]]},
}


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) for each finite number of `record` that has a tag; nothing for other events."""
    event = record.get("event")
    if event is None:
        pairs = [(tag, record.get(key)) for key, tag in TRAINING_TAGS.items()]
        for key, prefix in PER_KEY.items():
            if isinstance(record.get(key), dict):
                pairs += [(f"{prefix}{name}", value) for name, value in record[key].items()]
        for key, prefix in PER_RANK.items():
            if isinstance(record.get(key), list):
                pairs += [(f"{prefix}{rank}", value) for rank, value in enumerate(record[key])]
    elif event == "eval":
        pairs = [(tag, record.get(key)) for key, tag in EVAL_TAGS.items()]
    elif event == "export":
        pairs = [(tag, record.get(key)) for key, tag in EXPORT_TAGS.items()]
        if isinstance(record.get("cka_pinned"), dict):
            pairs += [(f"export/cka_v{pin}", cka) for pin, cka in record["cka_pinned"].items()]
    elif event == "export_refused":
        pairs = [("export/refused", 1)]
    elif event == "health":  # a warning starts (1) or clears (0): trainer/health.py
        pairs = [(f"health/{record.get('kind')}", 1 if record.get("active") else 0)]
    else:
        pairs = []
    for tag, value in pairs:
        number = _number(value)
        if number is not None:
            yield tag, number


_FILES = itertools.count()  # event files this process opened: part of each file's name, as SummaryWriter's


class TensorBoardSink(MetricsSink):
    """Writes scalars and image grids into RUN_DIR/tensorboard/; see the module docstring. OSError when
    the folder or an event cannot be written."""

    target = TENSORBOARD_DIR
    shows_images = True

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        self.log_dir = run_dir / self.target
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILES)}"
        self.path = self.log_dir / name
        self._file: Optional[BinaryIO] = open(self.path, "ab")
        self._records = RecordWriter(self._file)
        now = time.time()
        try:
            self._add(Event(wall_time=now, file_version="brain.Event:2"))
            if start_step > 0:  # the checkpoint of `start_step` holds that step's update: only later steps are redone
                self._add(Event(wall_time=now, step=start_step + 1, session_log=SessionLog(status=SessionLog.START)))
            self._add(Event(wall_time=now, summary=custom_scalars(LAYOUT)))
        except BaseException:
            self.close()
            raise

    def _add(self, event: Event) -> None:
        if self._file is None:
            raise ValueError("tensorboard sink is closed")
        self._records.write(event.SerializeToString())
        self._file.flush()

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        values = [value for tag, number in scalars(record) for value in scalar(tag, number).value]
        if isinstance(step, bool) or not isinstance(step, int) or not values:
            return
        if record.get("event") == "health" and isinstance(record.get("message"), str):  # the Text tab says what
            values += list(text("warnings", record["message"]).value)
        walltime = _number(record.get("time"))
        self._add(Event(wall_time=walltime or time.time(), step=step, summary=Summary(value=values)))

    def image(self, tag: str, step: int, image_hwc: np.ndarray) -> None:
        self._add(Event(wall_time=time.time(), step=step, summary=image(tag, image_hwc, dataformats="HWC")))

    def close(self) -> None:
        file, self._file = self._file, None
        close_quietly(file)
