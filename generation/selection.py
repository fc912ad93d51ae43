"""Which image to keep: the best by F-CLIPScore (0 = nothing misaligned), ties by CLIPScore."""

from __future__ import annotations

from collections.abc import Sequence

from feedback import MisalignmentReport


def rank_key(report: MisalignmentReport) -> tuple[float, float]:
    """Larger is better: (F-CLIPScore, CLIPScore)."""
    return (report.f_clip_score, report.clip_score)


def best_index(reports: Sequence[MisalignmentReport]) -> int:
    """Index of the best report (the first one on exact ties)."""
    if not reports:
        raise ValueError("no reports to choose from")
    return max(range(len(reports)), key=lambda i: (rank_key(reports[i]), -i))
