"""The paper's evaluation metrics (pure functions over per-sample results).

LA: fraction of foiled captions whose most negative word is the foil.
AP: average precision of a score at separating original (positive) from foiled captions.
Word P/R/F1: threshold-mode words against per-token labels, counts summed over the set.
Pearson / Spearman: F-CLIPScore against a human misalignment score.
"""

from __future__ import annotations

import math

import numpy as np


def localization_accuracy(hits: list[bool]) -> float:
    return float(np.mean(hits)) if hits else math.nan


def average_precision(is_original: list[bool], scores: list[float]) -> float:
    """AP with "caption is original" as the positive label (higher score = more original)."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(is_original, dtype=int)
    if len(set(y.tolist())) < 2:
        return math.nan
    return float(average_precision_score(y, np.asarray(scores, dtype=np.float64)))


def word_prf(pred: list[int], true: list[int]) -> dict:
    """Precision/recall/F1 of flattened per-token labels (1 = misaligned), summed over the set."""
    from sklearn.metrics import precision_recall_fscore_support

    if not true:
        return {"precision": math.nan, "recall": math.nan, "f1": math.nan}
    p, r, f, _ = precision_recall_fscore_support(true, pred, average="binary", zero_division=0)
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def correlations(pred: list[float], human: list[float]) -> dict:
    from scipy.stats import pearsonr, spearmanr

    if len(pred) < 3 or np.std(pred) == 0 or np.std(human) == 0:
        return {"pearson": math.nan, "spearman": math.nan}
    return {
        "pearson": float(pearsonr(pred, human)[0]),
        "spearman": float(spearmanr(pred, human)[0]),
    }


def spans_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]
