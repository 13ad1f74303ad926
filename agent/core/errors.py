"""The project's exceptions: each message says what failed and what to do next.

The CLI catches `ByolAgentError` and prints its message as one line (no traceback), so raise
one of these wherever the cause is the user's input or environment rather than a bug.
"""

from __future__ import annotations


class ByolAgentError(Exception):
    """Base class: a failure whose message is meant for the user, printed as one line."""


class ConfigError(ByolAgentError, ValueError):
    """A config key or value is wrong (unknown key, bad type, out of range)."""


class SourceError(ByolAgentError):
    """A capture source cannot be opened or read (missing camera, unreadable video, empty folder)."""


class EndpointError(ByolAgentError):
    """A ZeroMQ endpoint is malformed, cannot be bound, or cannot be reached."""


class ModelFileError(ByolAgentError):
    """An ONNX model, manifest or checkpoint file is missing, truncated, corrupt or mismatched."""


class CheckpointError(ModelFileError):
    """No usable checkpoint could be read from a run directory."""


class StorageError(ByolAgentError):
    """A file could not be written (disk full, read-only, permissions): transient, never a refusal.

    The writer keeps its last good state on disk and tries again later; nothing is marked bad.
    """


class ExportRefused(ByolAgentError):
    """An export failed its parity or collapse gate; the previous version stays published."""
