"""Which image to keep without a verifier card: for a prompt judged by regions (two or more
objects, or a placed one: `feedback.regions.RegionReport.regional`) the best region-aware
score (weakest phrase on its region, failed relations and missing objects pulling it down);
otherwise the best F-CLIPScore (0 = nothing misaligned), ties by CLIPScore."""

from __future__ import annotations

from collections.abc import Sequence

from feedback import MisalignmentReport


def rank_key(report: MisalignmentReport) -> tuple[float, float]:
    """Larger is better: (region score, CLIPScore) for a region-judged report, else
    (F-CLIPScore, CLIPScore)."""
    if getattr(report, "regional", False):
        return (report.score, report.clip_score)
    return (report.f_clip_score, report.clip_score)


def best_index(reports: Sequence[MisalignmentReport]) -> int:
    """Index of the best report (the first one on exact ties)."""
    if not reports:
        raise ValueError("no reports to choose from")
    return max(range(len(reports)), key=lambda i: (rank_key(reports[i]), -i))
