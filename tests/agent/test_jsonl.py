"""JSON-lines files have one owner (agent/core/jsonl.py): a torn or garbled line is skipped and counted on
reading, and every appender (histories, `append_event`, the metrics sink) ends a torn last line before
writing, so a crash mid-write costs that line only. Real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.core.atomic import append_record
from agent.core.errors import StorageError
from agent.core.jsonl import append_jsonl, read_jsonl
from trainer.run_records import append_event, read_metrics
from trainer.sinks import open_sink

TORN = '{"step": 1}\n{"step": 2, "loss": 0.'  # a crash cut the second line


def test_reading_skips_and_counts_torn_garbled_and_non_object_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n[1, 2]\n\xff\xfe garbled\n{"a": 2}\n{"a": 3, "b"')
    read = read_jsonl(path)
    assert read.rows == [{"a": 1}, {"a": 2}]
    assert read.bad_lines == 3


@pytest.mark.parametrize("writer", ["append_record", "append_event", "jsonl_sink"])
def test_every_appender_ends_a_torn_last_line_first(writer: str, tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(TORN)
    record = {"step": 3, "loss": float("nan")}
    if writer == "append_record":
        assert append_record(path, record)
    elif writer == "append_event":
        append_event(tmp_path, record)
    else:
        sink = open_sink("jsonl", tmp_path)
        sink.write(record)
        sink.close()
    metrics = read_metrics(tmp_path)
    assert metrics.train == [{"step": 1}, {"step": 3, "loss": None}]
    assert metrics.bad_lines == 1
    assert path.read_text().splitlines()[1:] == ['{"step": 2, "loss": 0.', json.dumps({"step": 3, "loss": None})]


def test_an_unwritable_or_unreadable_file_is_one_storage_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "x.jsonl"
    with pytest.raises(StorageError, match=r"cannot append to .*x\.jsonl: No such file"):
        append_jsonl(missing, {"a": 1})
    with pytest.raises(StorageError, match=r"cannot read .*x\.jsonl: No such file"):
        read_jsonl(missing)
