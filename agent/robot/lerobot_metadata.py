"""A LeRobot dataset's metadata read without `lerobot`: `meta/info.json` (checked) and where each episode of a
camera lies (`list_episodes`). The frames are read by agent/robot/lerobot_dataset.py.

The layout followed is LeRobot's own (huggingface/lerobot, src/lerobot/datasets/utils.py and
dataset_metadata.py at 7427f31; the v2.1 constants from d4ee470 and scripts/convert_dataset_v21_to_v30.py):

- `meta/info.json`: `codebase_version`, `fps`, `features` (a camera is a feature with `dtype: "video"`,
  LeRobot's `video_keys`), `video_path` (a `str.format` template), `chunks_size`.
- v2.x: one mp4 per episode and camera, `videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4`
  with `episode_chunk = episode_index // chunks_size`; episodes listed in `meta/episodes.jsonl`
  (`episode_index`, `length`).
- v3.x: episodes concatenated, `videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4`; where each
  episode lies is in `meta/episodes/chunk-*/file-*.parquet` (`videos/{key}/chunk_index`, `file_index`,
  `from_timestamp`, `to_timestamp`; LeRobot's reader shifts its queries by `from_timestamp`, dataset_reader.py).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from agent.core.errors import SourceError

log = logging.getLogger(__name__)

INFO_PATH = "meta/info.json"
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"  # v2.x
EPISODES_DIR = "meta/episodes"  # v3.x
DEFAULT_CHUNK_SIZE = 1000  # LeRobot's DEFAULT_CHUNK_SIZE, used when info.json has no chunks_size


@dataclass(frozen=True)
class Episode:
    """Where one episode of one camera lies: `path`'s frames with `start_s` <= time < `end_s` (seconds in
    that file; 0 and inf for a v2.x file of its own); `length` is its frame count from the metadata."""

    index: int
    length: Optional[int]
    path: Path
    start_s: float = 0.0
    end_s: float = math.inf


def dataset_error(root: Path, what: str) -> SourceError:
    """The one-line error naming the dataset `root` and `what` is wrong with it."""
    return SourceError(f"LeRobot dataset '{root}': {what}")


def read_info(root: Path) -> dict[str, Any]:
    """`meta/info.json`, checked for what reading videos needs. SourceError (one line) naming the file and key."""
    path = root / INFO_PATH
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise dataset_error(root, f"{path} cannot be read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise dataset_error(root, f"{path} is not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise dataset_error(root, f"{path} holds {type(info).__name__}, not an object")
    version = info.get("codebase_version")
    if not isinstance(version, str) or not version.startswith(("v2.", "v3.")):
        raise dataset_error(root, f"{path}: key 'codebase_version' is {version!r}; the v2.x and v3.x layouts are read")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0 or not math.isfinite(fps):
        raise dataset_error(root, f"{path}: key 'fps' is {fps!r}, expected a number > 0")
    chunks = info.get("chunks_size", DEFAULT_CHUNK_SIZE)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks <= 0:
        raise dataset_error(root, f"{path}: key 'chunks_size' is {chunks!r}, expected an integer > 0")
    features = info.get("features")
    if not isinstance(features, dict):
        raise dataset_error(root, f"{path}: key 'features' is missing or not an object")
    if not video_keys(info):
        raise dataset_error(root, f"{path}: key 'features' has no camera (no feature with dtype 'video')")
    if not isinstance(info.get("video_path"), str):
        raise dataset_error(root, f"{path}: key 'video_path' is {info.get('video_path')!r}, expected a path template")
    return info


def video_keys(info: dict[str, Any]) -> list[str]:
    """The camera keys, in the features' order (LeRobot's `video_keys`)."""
    return [k for k, ft in info.get("features", {}).items() if isinstance(ft, dict) and ft.get("dtype") == "video"]


def _format(root: Path, template: str, **fields: Any) -> Path:
    try:
        return root / template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise dataset_error(
            root, f"{root / INFO_PATH}: key 'video_path' ({template!r}) cannot be filled ({exc!r})"
        ) from None


def _length(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0 else None


def list_episodes(root: Path, info: dict[str, Any], key: str) -> list[Episode]:
    """Camera `key`'s episodes in episode order. v2.x: meta/episodes.jsonl (a torn or malformed line is skipped
    with one warning); v3.x: the meta/episodes parquet files. SourceError (one line) naming the file at fault."""
    if info["codebase_version"].startswith("v2."):
        return _episodes_v2(root, info, key)
    return _episodes_v3(root, info, key)


def _episodes_v2(root: Path, info: dict[str, Any], key: str) -> list[Episode]:
    path = root / LEGACY_EPISODES_PATH
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise dataset_error(root, f"{path} cannot be read ({exc.strerror or exc})") from None
    episodes, bad = {}, 0
    for line in lines:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            index = item["episode_index"]
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ValueError(index)
        except (ValueError, TypeError, KeyError):
            bad += 1
            continue
        video = _format(
            root,
            info["video_path"],
            episode_chunk=index // info.get("chunks_size", DEFAULT_CHUNK_SIZE),
            video_key=key,
            episode_index=index,
        )
        episodes[index] = Episode(index, _length(item.get("length")), video)
    if bad:
        log.warning("LeRobot dataset '%s': skipped %d malformed line(s) of %s", root, bad, path)
    if not episodes:
        raise dataset_error(root, f"{path} lists no episodes")
    return [episodes[i] for i in sorted(episodes)]


def _episodes_v3(root: Path, info: dict[str, Any], key: str) -> list[Episode]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((root / EPISODES_DIR).glob("**/*.parquet"))
    if not files:
        raise dataset_error(root, f"{root / EPISODES_DIR} holds no .parquet files")
    prefix = f"videos/{key}/"
    columns = [
        "episode_index",
        "length",
        prefix + "chunk_index",
        prefix + "file_index",
        prefix + "from_timestamp",
        prefix + "to_timestamp",
    ]
    episodes = {}
    for file in files:
        try:
            table = pq.read_table(file, columns=columns)
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise dataset_error(
                root, f"{file} cannot be read for camera {key!r} ({str(exc).splitlines()[0]})"
            ) from None
        rows = table.to_pydict()
        for i in range(table.num_rows):
            index, chunk, number, start, end = (rows[column][i] for column in columns if column != "length")
            if None in (index, chunk, number, start, end):
                raise dataset_error(root, f"{file}: episode row {i} has an empty field for camera {key!r}")
            video = _format(root, info["video_path"], video_key=key, chunk_index=int(chunk), file_index=int(number))
            episodes[int(index)] = Episode(int(index), _length(rows["length"][i]), video, float(start), float(end))
    return [episodes[i] for i in sorted(episodes)]
