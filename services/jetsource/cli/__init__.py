"""The `jetsource` command line."""

from jetsource.cli.app import app, main

__all__ = ["app", "main"]
