"""`clip4dm eval` and `clip4dm score`: dataset-scale commands (filled in with ShapesWorld)."""

from __future__ import annotations


def add_commands(sub, add_detector_args) -> None:
    return None
