"""The `tensorboard` metrics sink: event files in RUN_DIR/tensorboard/ (`tensorboard --logdir runs/`).

Written by TensorBoard's own writer (`torch.utils.tensorboard.SummaryWriter`). Each record becomes
scalars at its "step" (`scalars` below lists the tags): training windows (loss, lr, tau, embedding
std, images/s, buffer fill, frames received per camera), the online probe next to its random-init
value (`probe/knn`, `probe/knn_random_init`, one chart of both in the Custom Scalars tab), and each
export's version and drift (`export/version`, `export/r2_prev`, `export/cka_prev`, `export/cka_vP`
to each pinned version P). A resumed run writes a new event file into the same folder with
`purge_step` just after its start step, so TensorBoard continues the curves and drops what an earlier
process logged beyond the checkpoint it resumed from.

The writer writes from a background thread that dies on its first OSError (a full disk) and
re-raises it at the next add or flush; `MetricsWriter` then counts it and later reopens the sink
(a new event file, as TensorBoard reads several). The thread's own traceback print is silenced
for that case only (`_quiet_writer_thread_errors`): the one-line warning says it.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from trainer.sinks import MetricsSink

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
EVAL_TAGS = {  # trainer.evaluation.EvalResult.to_event()
    "knn_top1": "probe/knn",
    "random_knn_top1": "probe/knn_random_init",
    "linear_top1": "probe/linear",
    "random_linear_top1": "probe/linear_random_init",
}
EXPORT_TAGS = {"version": "export/version", "r2": "export/r2_prev", "cka_prev": "export/cka_prev"}  # export.compat.drift_record
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
    else:
        pairs = []
    for tag, value in pairs:
        number = _number(value)
        if number is not None:
            yield tag, number


class TensorBoardSink(MetricsSink):
    """Writes scalars and image grids into RUN_DIR/tensorboard/; see the module docstring."""

    shows_images = True

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        _quiet_writer_thread_errors()
        self.log_dir = run_dir / TENSORBOARD_DIR
        self._writer: Optional[SummaryWriter] = SummaryWriter(
            str(self.log_dir), purge_step=start_step + 1 if start_step > 0 else None, flush_secs=FLUSH_S
        )  # the checkpoint of `start_step` holds that step's update: only later steps are redone
        self._writer.add_custom_scalars(LAYOUT)

    def _open(self) -> SummaryWriter:
        if self._writer is None:
            raise ValueError("tensorboard sink is closed")
        return self._writer

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            return
        writer, walltime = self._open(), _number(record.get("time"))
        for tag, value in scalars(record):
            writer.add_scalar(tag, value, step, walltime=walltime)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        self._open().add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # a dead writer thread re-raises its disk error here: already counted
                pass


_hook_lock = threading.Lock()
_hook_installed = False


def _quiet_writer_thread_errors() -> None:
    """Keep the default thread hook from printing a traceback when a SummaryWriter's background
    thread dies of an OSError (the sink re-raises it on the training thread, where it is counted
    and logged in one line). Other threads and other errors reach the previous hook unchanged."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if isinstance(args.thread, _AsyncWriterThread) and issubclass(args.exc_type, OSError):
                return
            previous(args)

        threading.excepthook = hook
        _hook_installed = True
