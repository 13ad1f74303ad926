"""A folder (read recursively, symlinked folders followed once), a glob or one image file as one finite frame source."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from agent.core.errors import SourceError
from agent.core.image_codecs import bgr_to_rgb, read_image_bgr
from agent.robot.source_base import RecordingSource, SourceExhausted

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
GLOB_CHARS = "*?["


def is_image_folder(spec: str) -> bool:
    """An existing folder (its images are read recursively)."""
    return os.path.isdir(spec)


def is_image_glob(spec: str) -> bool:
    """A glob pattern (* ? [) that is not itself an existing path: `drive[1].avi` or `run[3]` that exist are
    the file and folder they name."""
    return any(ch in spec for ch in GLOB_CHARS) and not os.path.exists(spec)


def is_image_file(spec: str) -> bool:
    """One image file, by its suffix."""
    return Path(spec).suffix.lower() in IMAGE_EXTENSIONS and not is_image_glob(spec)


def walk_files(root: str) -> list[str]:
    """Every file under `root`, following symlinked folders once each and never round a loop: a real folder
    (device, inode) already visited is not entered again, whatever link leads there."""
    seen: set[tuple[int, int]] = set()
    files: list[str] = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:  # gone since it was listed
            subfolders[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            subfolders[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        files.extend(os.path.join(folder, name) for name in names)
    return files


def unique_files(paths: list[str]) -> list[str]:
    """Existing regular files, each once: paths reaching one file through symlinked folders (a glob with **
    through a symlink loop lists it dozens of times) keep their first, sorted, spelling."""
    seen: set[str] = set()
    out = []
    for path in sorted(paths):
        real = os.path.realpath(path)
        if real not in seen and os.path.isfile(path):
            seen.add(real)
            out.append(path)
    return out


class ImageFilesSource(RecordingSource):
    """Still images from a folder (searched recursively) or a glob pattern, in sorted path order.

    With `shuffle`, each pass goes through the files in a new random order (seeded, so a run
    reproduces it): a folder sorted by class is otherwise a class-after-class stream.

    An unreadable file is skipped with a warning; a folder that vanishes is a lost source, and
    reopening it resumes at the same position. Images with 16-bit samples are scaled by `bit_depth`
    or the depth the file states (`agent.core.image_codecs.read_image_bgr`).
    """

    def __init__(
        self,
        spec: str,
        loop: bool = False,
        pattern: Optional[bool] = None,
        shuffle: bool = False,
        bit_depth: Optional[int] = None,
    ) -> None:
        self._is_glob = is_image_glob(spec) if pattern is None else pattern
        super().__init__(f"image glob {spec!r}" if self._is_glob else f"image folder '{spec}'")
        self.spec, self.loop, self.bit_depth = spec, loop, bit_depth
        self._order = np.random.default_rng(0) if shuffle else None
        self._files: list[str] = []
        self._count: Optional[int] = None  # files found at the last connect (kept after disconnect: replay's plan)
        self._index = 0
        self.delivered = 0

    def _list(self) -> list[str]:
        if self._is_glob:
            files = unique_files(glob.glob(self.spec, recursive=True))
            if not files:
                raise SourceError(f"{self.name} matches no files")
            return files
        if not os.path.isdir(self.spec):
            raise SourceError(f"{self.name} does not exist")
        files = unique_files([p for p in walk_files(self.spec) if Path(p).suffix.lower() in IMAGE_EXTENSIONS])
        if not files:
            raise SourceError(f"{self.name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files

    @property
    def frame_count(self) -> Optional[int]:
        """Image files found when last connected (unreadable ones included; None before the first connect)."""
        return self._count

    def start_at(self, frame: int) -> None:
        self._index = max(0, int(frame))  # the first pass starts there (in the sorted or seeded order)

    def connect(self) -> None:
        """List the files; before the first image is delivered, also check that one decodes, so a
        folder of only unreadable files is a start-up error rather than a capture that sends nothing."""
        files = self._list()
        if self.delivered == 0 and not any(read_image_bgr(path, self.bit_depth) is not None for path in files):
            raise SourceError(f"{self.name}: none of its {len(files)} files could be read as an image")
        self._files, self._count = files, len(files)
        if self._index == 0:  # a reconnect resumes the pass it was in
            self._shuffle()

    def _shuffle(self) -> None:
        if self._order is not None:
            self._files = [self._files[i] for i in self._order.permutation(len(self._files))]

    def read(self) -> np.ndarray:
        if not self._files:
            raise SourceError(f"{self.name} is not connected")
        for _ in range(len(self._files)):
            if self._index >= len(self._files):
                if self.delivered == 0:
                    break  # a whole pass without one readable image
                if not self.loop:
                    raise SourceExhausted(f"{self.name} has no more images")
                self._index = 0
                self._shuffle()
            path = self._files[self._index]
            self._index += 1
            bgr = read_image_bgr(path, self.bit_depth)
            if bgr is not None:
                self.delivered += 1
                return bgr_to_rgb(bgr)
            if not os.path.exists(path):
                raise SourceError(f"{self.name}: {path} has disappeared")
            self.skipped += 1
            log.warning("%s: skipping unreadable image %s", self.name, path)
        raise SourceError(f"{self.name}: none of its {len(self._files)} files could be read as an image")

    def disconnect(self) -> None:
        self._files = []
