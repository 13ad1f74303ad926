"""`byol-agent eval`: kNN and linear-probe accuracy of an exported encoder vs a random-init one.

Exit status 0 = evaluated, 1 = `--previous` given and a probe regressed (a shell export gate),
2 = bad input (one-line error).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from agent.commands._common import add_config_arguments, config_from_args
from agent.core.errors import ModelFileError

if TYPE_CHECKING:
    from trainer.feature_probes import EvalResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", required=True, help="export directory (evaluates LATEST) or a .onnx file")
    parser.add_argument("--data", required=True, help="image folder with one subfolder per class, or 'digits'")
    parser.add_argument("--k", type=int, default=None, help="kNN neighbours (default eval.k = 20)")
    parser.add_argument("--run-dir", default=None, help="append the result as an eval event to RUN_DIR/metrics.jsonl")
    parser.add_argument(
        "--previous", default=None, help="a saved --json result: exit 1 if a probe regressed against it"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, {"eval.k": args.k})
    from export.evaluate import evaluate_export  # torch and sklearn load after parsing
    from trainer.feature_probes import probe_regressed
    from trainer.run_records import RunDirError, append_event

    if args.run_dir is not None and not Path(args.run_dir).is_dir():
        raise RunDirError(f"run directory {args.run_dir!r} does not exist")
    previous = _load_previous(args.previous) if args.previous else None
    result = evaluate_export(args.encoder, args.data, cfg.eval, operator_model=cfg.model)
    event = result.to_event()
    if args.run_dir is not None:
        append_event(args.run_dir, event)
    print(json.dumps(event) if args.json else result.table())
    if previous is not None and probe_regressed(result, previous):
        print(
            f"regressed: kNN {result.knn_top1:.3f} vs {previous.knn_top1:.3f}, "
            f"linear {result.linear_top1:.3f} vs {previous.linear_top1:.3f} (previous)"
        )
        return 1
    return 0


def _load_previous(path: str) -> "EvalResult":
    from trainer.feature_probes import EvalResult

    try:
        tree = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelFileError(f"previous eval result {path!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        tree = None
    if not isinstance(tree, dict):
        raise ModelFileError(f"previous eval result {path!r} is not a JSON object from `eval --json`")
    return EvalResult.from_dict(tree)
