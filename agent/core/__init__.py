"""The shared kernel: the config schema, errors, atomic files, the wire format and frame preparation.

Imports nothing else of ours (import-linter contract in pyproject.toml); every other layer may use it.
"""
