"""`byol-agent eval` end to end: a real export, scikit-learn's digits, a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main as cli_main
from tests.conftest import REPO
from tests.trainer.test_feature_probes import publish_random_init
from trainer.run_records import read_metrics

pytestmark = pytest.mark.slow


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "eval", *args], cwd=REPO, capture_output=True, text=True, timeout=240
    )


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("exports")
    publish_random_init(path, seed=3)
    return path


def _saved(export_dir: Path, knn: float, linear: float) -> dict:
    """A result as `eval --json` saves it, for the same data, split and k."""
    return {
        "encoder": str(export_dir),
        "version": 0,
        "step": 0,
        "data": "digits",
        "k": 20,
        "n_train": 1258,
        "n_test": 539,
        "num_classes": 10,
        "feature_dim": 64,
        "knn_top1": knn,
        "linear_top1": linear,
        "random_knn_top1": None,
        "random_linear_top1": None,
        "seed": 0,
        "seconds": 0.0,
    }


def test_eval_digits_json_run_dir_and_gate(export_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(_saved(export_dir, 0.1, 0.1)))
    out = _eval(
        "--encoder", str(export_dir), "--data", "digits", "--run-dir", str(run), "--json", "--previous", str(worse)
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["event"] == "eval" and result["version"] == 1 and result["k"] == 20
    assert 0.3 < result["knn_top1"] <= 1.0 and result["random_knn_top1"] is not None
    assert read_metrics(run).of("eval") == [result]


def test_eval_table_and_regression_exit_status(export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    better = tmp_path / "better.json"
    better.write_text(json.dumps({**_saved(export_dir, 0.999, 0.999), "k": 5}))
    status = cli_main(
        [
            "eval",
            "--encoder",
            str(export_dir / "encoder-000001.onnx"),
            "--data",
            "digits",
            "--k",
            "5",
            "--previous",
            str(better),
        ]
    )
    assert status == 1
    lines = capsys.readouterr().out.splitlines()
    assert "kNN top-1" in lines[1] and "k=5" in lines[1]
    assert lines[2].split()[0] == "encoder" and float(lines[2].split()[1]) > 0.3
    assert lines[3].startswith("random init") and float(lines[3].split()[2]) > 0.3
    assert lines[4].startswith("note: at the default config the probe usually passes random init")  # a step-0 export
    assert lines[5].startswith("regressed: kNN")


def test_bad_input_is_a_one_line_error_exit_2(export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an onnx model")
    exports = str(export_dir)
    for args, message in (
        (["--encoder", str(corrupt), "--data", "digits"], "cannot load"),
        (["--encoder", exports, "--data", str(tmp_path / "no-such-folder")], "eval data folder"),
        (["--encoder", exports, "--data", "digits", "--run-dir", str(tmp_path / "no-run")], "run directory"),
        (["--encoder", exports, "--data", "digits", "--previous", str(tmp_path / "no.json")], "previous eval result"),
    ):
        assert cli_main(["eval", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_a_manifest_naming_an_import_string_runs_nothing(tmp_path: Path) -> None:
    """`eval` once built the random-init reference from the manifest's import string (and exited 0)."""
    export_dir, marker = tmp_path / "exports", tmp_path / "pwned"
    publish_random_init(export_dir, seed=3)
    manifest_path = export_dir / (export_dir / "LATEST").read_text().strip()
    manifest = json.loads(manifest_path.read_text())
    manifest["model"].update(encoder="subprocess:getoutput", encoder_kwargs={"cmd": f"touch {marker}"})
    manifest_path.write_text(json.dumps(manifest))
    out = _eval("--encoder", str(export_dir), "--data", "digits")
    assert not marker.exists()
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "import string 'subprocess:getoutput'" in out.stderr


def test_eval_says_when_an_encoder_is_younger_than_the_measured_crossing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from export.evaluate import DEFAULT_PASSES_RANDOM_INIT_STEPS as passes
    from export.evaluate import young_encoder_note
    from tests.export.tiny import publish_version

    publish_version(tmp_path, seed=1, step=passes // 3)
    assert cli_main(["eval", "--encoder", str(tmp_path), "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert (
        f"note: at the default config the probe usually passes random init after ~{passes} steps on real photos "
        f"(benchmarks/RESULTS.md); this encoder has {passes // 3}"
    ) in out, out
    assert young_encoder_note(passes) is None and young_encoder_note(None) is None  # as old, or no manifest step
