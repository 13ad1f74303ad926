"""train.precision=bf16 on the CPU: fast where the CPU computes bf16 natively, said in one line where it does not."""

from __future__ import annotations

import logging

import pytest
import torch

from agent.core.config import load_config
from trainer.distributed import SOLO
from trainer.train_step import native_cpu_bf16, setup_torch


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_is_named_in_one_line(
    native: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_cpu_bf16() is native
    threads = torch.get_num_threads()
    with caplog.at_level(logging.WARNING, logger="trainer.train_step"):
        setup_torch(load_config(None, ["train.device=cpu", "train.precision=bf16"]).train, SOLO)
        setup_torch(load_config(None, ["train.device=cpu", "train.precision=fp32"]).train, SOLO)
    torch.set_num_threads(threads)
    warnings = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == (0 if native else 1), warnings


def test_a_torch_that_cannot_tell_says_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert native_cpu_bf16() is None
