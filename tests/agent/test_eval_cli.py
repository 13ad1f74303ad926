"""`byol-agent eval` end to end: a real export, scikit-learn's digits, a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.trainer.test_evaluation import publish_random_init
from trainer.report import read_metrics


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "eval", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("exports")
    publish_random_init(path, seed=3)
    return path


def test_eval_digits_table_json_and_run_dir(export_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    out = _eval("--encoder", str(export_dir), "--data", "digits", "--run-dir", str(run), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["event"] == "eval" and result["version"] == 1 and result["k"] == 20
    assert 0.3 < result["knn_top1"] <= 1.0 and result["random_knn_top1"] is not None
    assert read_metrics(run).of("eval") == [result]

    table = _eval("--encoder", str(export_dir / "encoder-000001.onnx"), "--data", "digits", "--k", "5")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "kNN top-1" in lines[1] and "k=5" in lines[1]
    assert lines[2].split()[0] == "encoder" and float(lines[2].split()[1]) > 0.3
    assert lines[3].startswith("random init")


def test_previous_result_gates_the_exit_status(export_dir: Path, tmp_path: Path) -> None:
    better = tmp_path / "previous.json"
    better.write_text(json.dumps({**_base(export_dir), "knn_top1": 0.999, "linear_top1": 0.999}))
    out = _eval("--encoder", str(export_dir), "--data", "digits", "--previous", str(better))
    assert out.returncode == 1 and "regressed" in out.stdout
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps({**_base(export_dir), "knn_top1": 0.1, "linear_top1": 0.1}))
    assert _eval("--encoder", str(export_dir), "--data", "digits", "--previous", str(worse)).returncode == 0


def _base(export_dir: Path) -> dict:
    return {"encoder": str(export_dir), "version": 0, "step": 0, "data": "digits", "k": 20, "n_train": 1258,
            "n_test": 539, "num_classes": 10, "feature_dim": 1, "random_knn_top1": None, "random_linear_top1": None,
            "seed": 0, "seconds": 0.0}


def test_corrupt_onnx_and_missing_data_are_one_line_errors(export_dir: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an onnx model")
    out = _eval("--encoder", str(corrupt), "--data", "digits")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "cannot load" in out.stderr and "Traceback" not in out.stderr
    missing = _eval("--encoder", str(export_dir), "--data", str(tmp_path / "no-such-folder"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
