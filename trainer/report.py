"""`byol-agent report`: one page on a run directory — is it learning, is data flowing, is the robot served.

Reads what the pipeline appends to the run directory:
- metrics.jsonl (trainer, `trainer/run_monitor.py`): a training line every `train.metrics_every`
  steps (step, loss, embedding_std, img_per_s, frames_in, frames_dropped, buffer_fill as a
  fraction 0..1, frames_per_camera, ...) and event lines ("start", "stop" with the final step and
  counters, "export", "export_refused", "restore", "eval" with knn_top1 / random_knn_top1 per version);
- capture.jsonl (capture, `agent/robot/capture.py`): cumulative frames read / kept / novelty
  skipped / sent / dropped, and frames read per source, every 10 s and at the end;
- runtime.jsonl (runtime consumer, `agent/robot/policy_loop.py`): "serve" / "swap" records and
  every 10 s the latency percentiles (ms) of the calls since the previous record;
- config.yaml: `model.projection_size` d for the embedding-std references.
Every record carries a wall-clock "time"; the overview's x axis is seconds since the earliest one.

Writes RUN_DIR/report/: summary.md, overview.png (the three questions, on a wall clock) and the
detailed PNGs (per step). Runs differ in what they record, so the report draws what exists and
names what is missing instead of failing; a torn last line (a crash mid-write) is skipped and
counted. Exported versions are drawn as one step function of the version number, so hundreds of
them stay readable. Figures use matplotlib's object API (no pyplot, no global backend state),
imported only when a report is drawn.

The parts: `trainer.run_records` (reading the records, the metrics API), `trainer.report_figures` and
`trainer.report_panels` (the figures), `trainer.report_summary` (summary.md); this module writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from agent.core.errors import StorageError
from trainer.report_figures import draw_figures
from trainer.report_summary import summary_markdown
from trainer.run_records import read_run

__all__ = ["Report", "write_report"]


@dataclass(frozen=True)
class Report:
    plots: list[Path]
    summary: Path
    missing: list[str]


def write_report(run_dir: Union[str, Path], out_dir: Optional[Union[str, Path]] = None) -> Report:
    """Write RUN_DIR/report/ (or `out_dir`): summary.md, overview.png and the detailed PNGs.

    Returns what was written and which series were not recorded. Raises RunDirError for a run
    directory without a readable metrics.jsonl, StorageError when the report cannot be written.
    """
    run = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    figures, missing = draw_figures(run)
    plots = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stem, fig in figures.items():
            fig.savefig(out / f"{stem}.png")
            plots.append(out / f"{stem}.png")
        summary = out / "summary.md"
        summary.write_text(summary_markdown(run, plots, missing))
    except OSError as exc:
        raise StorageError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
    return Report(plots, summary, missing)
