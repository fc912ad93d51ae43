"""The paper's evaluation metrics (pure functions over per-sample results).

LA: fraction of foiled captions whose flagged word(s) hit the foil (per-benchmark rules in
    `evaluate`).
AP: average precision of a score at separating original from foiled captions, with either
    class as the positive one (`AP_POSITIVE`: the paper's choice per benchmark).
Word P/R/F1: threshold-mode words against per-token labels, counts summed over the set.
Pearson / Spearman: F-CLIPScore against a human misalignment score.
"""

from __future__ import annotations

import math

import numpy as np


def localization_accuracy(hits: list[bool]) -> float:
    """Fraction of hits; NaN when there is nothing to localize."""
    return float(np.mean(hits)) if hits else math.nan


AP_CONVENTIONS = ("original", "foil")

# Which class the authors' main.py (`calculate_metrics`) takes as AP's positive one:
# "original" scores the original captions with the score as is, "foil" scores the foiled
# captions with the negated score. SeeTRUE-Feedback keeps main.py's default ("original"):
# its SeeTRUE branch never switches, and its test set holds no aligned pair, so its AP is
# undefined under either choice.
AP_POSITIVE = {
    "foil": "original",
    "nocaps-foil": "original",
    "shapes-foil": "original",
    "hat": "foil",
    "richhf": "foil",
    "seetrue": "original",
}


def average_precision(
    is_original: list[bool], scores: list[float], positive: str = "original"
) -> float:
    """AP of `scores` (higher = more aligned) at separating original from foiled captions.

    positive="original": the originals are the positive class, ranked by the score as is.
    positive="foil": the foils are the positive class, ranked by the negated score.
    NaN when only one class is present.
    """
    from sklearn.metrics import average_precision_score

    if positive not in AP_CONVENTIONS:
        raise ValueError(f"positive must be one of {AP_CONVENTIONS}, got {positive!r}")
    y = np.asarray(is_original, dtype=int)
    if len(set(y.tolist())) < 2:
        return math.nan
    s = np.asarray(scores, dtype=np.float64)
    if positive == "foil":
        y, s = 1 - y, -s
    return float(average_precision_score(y, s))


def word_prf(pred: list[int], true: list[int]) -> dict:
    """Precision/recall/F1 of flattened per-token labels (1 = misaligned), summed over the set."""
    from sklearn.metrics import precision_recall_fscore_support

    if not true:
        return {"precision": math.nan, "recall": math.nan, "f1": math.nan}
    p, r, f, _ = precision_recall_fscore_support(true, pred, average="binary", zero_division=0)
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def correlations(pred: list[float], human: list[float]) -> dict:
    """Pearson and Spearman correlation of `pred` with `human` (NaN when undefined)."""
    from scipy.stats import pearsonr, spearmanr

    if len(pred) < 3 or np.std(pred) == 0 or np.std(human) == 0:
        return {"pearson": math.nan, "spearman": math.nan}
    return {
        "pearson": float(pearsonr(pred, human)[0]),
        "spearman": float(spearmanr(pred, human)[0]),
    }


def spans_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two [start, end) character spans share a character."""
    return a[0] < b[1] and b[0] < a[1]
