"""Errors that name the problem; the CLI turns them into one line on stderr and exit code 2."""

from __future__ import annotations


class Clip4dmError(Exception):
    """Base class of every error clip4dm raises on purpose."""


class InputError(Clip4dmError, ValueError):
    """Bad user input: missing/unreadable image, empty caption, bad option value."""


class ModelLoadError(Clip4dmError):
    """Unknown model name, unsupported architecture, or weights not available offline."""


class OfflineError(ModelLoadError):
    """The model is neither in the local cache nor downloadable (the hub cannot be reached)."""


class NonFiniteScoreError(Clip4dmError, FloatingPointError):
    """The model produced NaN/inf similarities or attributions (often fp16 overflow)."""


def short_reason(e: BaseException) -> str:
    """First line of an exception, prefixed by its type: enough to act on, no traceback."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0] if lines else ''}"
    if len(text) > 300:  # cut at a word boundary, and say so
        text = text[:300].rsplit(" ", 1)[0] + " …"
    return text
