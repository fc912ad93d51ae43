"""The `clip4dm` command line: thin over the library (`main` is the console entry point)."""

from .main import main

__all__ = ["main"]
