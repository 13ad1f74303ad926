"""The pinned-versions store: `pins/encoder-NNNNNN.pin` marks a version some runtime serves embeddings in.

Retention keeps a pinned version and the maps its runtime reads; each new export also fits a direct
map into every pinned version's space (`export.fit_maps`).
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.core.atomic import atomic_write_bytes
from agent.core.errors import ModelFileError
from export.manifest import parse_version

PINS_DIR = "pins"
_PIN_RE = re.compile(r"^encoder-(\d{6,})\.pin$")


def pin_path(export_dir: Path, version: int) -> Path:
    return Path(export_dir) / PINS_DIR / f"encoder-{version:06d}.pin"


def write_pin(export_dir: Path, version: int) -> None:
    """Mark `version` as pinned by a runtime (kept after it stops: retention keeps its chain until
    the pin is moved with `repin` or the file is deleted). Raises OSError if it cannot be written."""
    path = pin_path(export_dir, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, f"{version}\n".encode())


def check_pinnable(export_dir: Path, version: int) -> None:
    """ModelFileError (one line) when `version` can never be served as a pin in `export_dir`: its
    manifest is gone while later versions exist (retention removed it, or it never was published).
    A version not published yet (nothing newer on disk) is allowed: the runtime waits for it."""
    present = sorted({v for p in Path(export_dir).glob("encoder-*.json") if (v := parse_version(p.name)) is not None})
    if version in present or not present or max(present) < version:
        return
    listing = f"{present[0]}-{present[-1]}" if len(present) > 3 else ", ".join(map(str, present))
    raise ModelFileError(
        f"cannot pin version {version}: it is not in {export_dir} (versions there: {listing}); refit the policy head "
        "on a version that is, and pin that one"
    )


def read_pins(export_dir: Path) -> set[int]:
    """Versions some runtime is pinned to (names under pins/; anything else there is ignored)."""
    try:
        names = [p.name for p in (Path(export_dir) / PINS_DIR).iterdir()]
    except OSError:
        return set()
    return {int(m.group(1)) for n in names if (m := _PIN_RE.match(n))}
