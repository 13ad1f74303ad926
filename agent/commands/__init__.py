"""Subcommands of `byol-agent`: each parses, validates, builds and runs; the work lives in the library."""
