"""One graph export in a spawned child process, so a tracer's process-global state never meets training.

The dynamo exporter traces with torch.export, whose state is process-wide: while it runs,
`torch.compiler.is_exporting()` is True on every thread, and each `torch._disable_dynamo` function
another thread calls (`optimizer.zero_grad`) enters fx's annotation bookkeeping on one global dict
(`torch/fx/traceback.py`). Exporting on a thread beside training, 4 of 7 DenseNet runs died in
`zero_grad` with `KeyError: 'custom'`. In a child process nothing is shared; the trainer's thread
steps on while the child traces (`BackgroundExporter`), and a child that crashes or hangs costs one
refused export, never the run.

The module travels pickled (`torch.save`: classes by import path, so torchvision nets, registered
encoders and `package.module:factory` nets all do; a module holding a lambda or a lock does not,
and is refused in one line, at start-up by `check_exportable`). The child is spawned, not forked
(a fork of a process with CUDA and threads is unsafe), imports torch afresh, runs with one
thread and ignores SIGINT once it runs our code (a terminal's Ctrl-C reaches the whole process
group; the trainer stops and finishes or abandons the export; one that lands while the child is
still importing ends that export, which is then refused).

Cost (benchmarks/bench_export_isolation.py, RESULTS.md): the child's start-up (spawn, importing
torch and the exporter) is paid per export, ~10 s on a loaded 2-core CPU, where a lock would stall
training only for the trace (2-3 s for tiny_cnn); on a GPU box the child shares nothing with training.
"""

from __future__ import annotations

import io
import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection

import torch
from torch import nn

from agent.core.config import ExportConfig
from agent.core.errors import ExportRefused
from export.manifest import InputSpec

CHILD_TIMEOUT_S = 1800.0  # the dynamo exporter took 4-30 s per encoder here; a hang is killed after this

Trace = Callable[[nn.Module, InputSpec, ExportConfig], tuple[bytes, int]]


def export_in_child(
    trace: Trace, wrapped: nn.Module, spec: InputSpec, cfg: ExportConfig, timeout_s: float = CHILD_TIMEOUT_S
) -> tuple[bytes, int]:
    """`trace(wrapped, spec, cfg)` (a module-level function: ONNX bytes and width D) run in a spawned process.

    Raises ExportRefused (one line) for the child's own refusal, a module that cannot be pickled,
    a child that dies (its exit code) or runs past `timeout_s` (killed).
    """
    buffer = io.BytesIO()
    try:
        torch.save(wrapped, buffer)
    except Exception as exc:  # pickling raises many types (PicklingError, TypeError, AttributeError)
        raise ExportRefused(
            f"{cfg.exporter} export runs in its own process and the encoder cannot be sent there: {_line(exc)}"
        ) from None
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_child_main, args=(send, trace, buffer.getvalue(), spec, cfg), name="byol-agent-export", daemon=True
    )
    child.start()
    send.close()  # ours: only the child writes; EOF then means it is gone
    try:
        if not receive.poll(timeout_s):
            raise ExportRefused(f"{cfg.exporter} export process still running after {timeout_s:.0f} s; killed it")
        try:
            status, payload = receive.recv()
        except (EOFError, OSError):
            child.join(5.0)
            raise ExportRefused(f"{cfg.exporter} export process died (exit code {child.exitcode})") from None
    finally:
        receive.close()
        child.join(5.0)
        if child.is_alive():
            child.kill()
            child.join()
    if status != "ok":
        raise ExportRefused(payload)
    return payload


def _child_main(send: Connection, trace: Trace, module: bytes, spec: InputSpec, cfg: ExportConfig) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the trainer, which finishes or abandons us
    torch.set_num_threads(1)  # beside training: keep off its cores
    try:
        wrapped = torch.load(io.BytesIO(module), weights_only=False)  # our own bytes, from the parent
        result: tuple[str, object] = ("ok", trace(wrapped, spec, cfg))
    except ExportRefused as exc:
        result = ("refused", str(exc))
    except Exception as exc:  # anything else from unpickling or the exporter: still a refusal of this export
        result = ("refused", f"{cfg.exporter} ONNX export failed in its process: {_line(exc)}")
    try:
        send.send(result)
        send.close()
    except OSError:  # the parent is gone (killed): nobody to tell
        pass


def _line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
