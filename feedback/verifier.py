"""A verifier fitted to one generator: P(image is right | the detector's outputs).

The detector's raw signals rank a generator's images only so well (on ShapesWorld, CLIPScore
alone ranks better than any word score alone). A verifier combines them -- CLIPScore,
F-CLIPScore, the sum and the minimum of the word scores in threshold units, the number of
flagged words, and the same relative to the other images of the same prompt -- in a logistic
regression (scikit-learn) fitted on ~300 images of *that* generator labelled right or wrong
(`clip4dm calibrate --data labels.jsonl --verifier verifier.json`). It is stored as a small
JSON card (features, standardisation, coefficients, the stop level and its false-accept rate
on the calibration pool, cross-validated AUC), so applying it needs no scikit-learn.

`Verifier.probabilities(reports)` takes the reports of the images of *one prompt* (the group
its relative features are computed in) and returns one probability per image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import InputError
from .report import MisalignmentReport

#: What the card's `features` may name, in order (see `image_features`).
FEATURES = (
    "clip_score",
    "f_clip_score_u",
    "min_word_u",
    "sum_negative_u",
    "mean_word_u",
    "n_flagged",
    "clip_score_vs_best",
    "clip_score_z",
    "min_word_vs_best",
    "f_clip_score_vs_best",
    "region_score",
    "weakest_phrase",
    "relation_margin",
    "n_missing",
    "region_score_vs_best",
)
CARD_KIND = "clip4dm-verifier"
#: How a card picks a prompt's image (`Verifier.select_by`).
SELECT_BY = ("p_right", "clip_score", "region_score")


def _region(rep: MisalignmentReport) -> list[float]:
    """Region features (`feedback.regions.RegionReport`): the combined score, the weakest
    phrase's cosine on its region, the worst relation margin (0: none judged) and the number
    of missing objects; a whole-image report (or one phrase, nothing placed) gives its cosine,
    its cosine, 0 and 0, so one card serves both kinds of prompt."""
    if not getattr(rep, "regional", False):
        return [float(rep.cosine), float(rep.cosine), 0.0, 0.0]
    margins = [r.margin for r in rep.relations if r.margin is not None]
    return [
        float(rep.score),
        float(min(p.cosine for p in rep.phrases)),
        float(min(margins)) if margins else 0.0,
        float(sum(not p.found for p in rep.phrases)),
    ]


def _raw(rep: MisalignmentReport, unit: float) -> list[float]:
    scores = [w.score for w in rep.words if w.score is not None and math.isfinite(w.score)]
    lo = min(scores) if scores else 0.0
    neg = sum(s for s in scores if s < 0)
    mean = sum(scores) / len(scores) if scores else 0.0
    return [
        float(rep.clip_score),
        float(rep.f_clip_score) / unit,
        lo / unit,
        neg / unit,
        mean / unit,
        float(sum(w.misaligned for w in rep.words)),
    ] + _region(rep)


def image_features(reports: Sequence[MisalignmentReport], unit: float) -> list[list[float]]:
    """(n, len(FEATURES)) features of the n images of one prompt. Word scores are in units of
    the detector's |eps| (`unit` > 0), so a card means the same on any calibrated CLIP; the
    relative features compare each image with the best of its group (0 for a lone image)."""
    if not unit > 0:
        raise ValueError(f"unit must be > 0 (the detector's |eps|), got {unit}")
    raw = [_raw(r, unit) for r in reports]
    if not raw:
        return []
    clips = [r[0] for r in raw]
    mins = [r[2] for r in raw]
    fs = [r[1] for r in raw]
    regs = [r[6] for r in raw]
    mu = sum(clips) / len(clips)
    sd = math.sqrt(sum((c - mu) ** 2 for c in clips) / len(clips))
    out = []
    for r in raw:
        rel = [
            r[0] - max(clips),
            (r[0] - mu) / sd if sd > 0 else 0.0,
            r[2] - max(mins),
            r[1] - max(fs),
        ]
        out.append(r[:6] + rel + r[6:] + [r[6] - max(regs)])
    return out


@dataclass
class Verifier:
    """A fitted verifier card (see the module docstring).

    features: the names used (a subset of `FEATURES`, in that order).
    mean, scale: standardisation of each feature; coef, intercept: the logistic model on the
        standardised features.
    unit: |eps| of the detector the card was fitted with (word scores are divided by it).
    stop_level: the P(right) at or above which an early-stopping loop stops, chosen so that
        at most `false_accept_rate` of the calibration pool's *wrong* images reach it.
    select_by: how a prompt's image is chosen: "p_right" (the highest P), "clip_score"
        (the highest CLIPScore) or "region_score" (the highest region-aware score,
        `RegionReport.score`), whichever kept a right image for more calibration prompts
        under cross-validation (P ranks *across* prompts well; within one prompt CLIPScore
        can rank as well or better, and then the card says so).
    extras: what other tools recorded with the card, kept as read and written back as
        top-level keys of the card's JSON (the feedback loop keeps its measured fix gains
        there: `generation.fixes`).
    """

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    unit: float
    stop_level: float
    false_accept_rate: float
    detector: str = ""
    threshold: float | None = None
    stats: dict = field(default_factory=dict)
    select_by: str = "p_right"
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise InputError(f"verifier card names unknown features {unknown}")
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise InputError("verifier card: features, mean, scale and coef differ in length")
        if self.select_by not in SELECT_BY:
            raise InputError(
                f"verifier card: select_by must be one of {SELECT_BY}, got {self.select_by!r}"
            )

    def select(self, reports: Sequence[MisalignmentReport], probs: Sequence[float]) -> int:
        """Index of the image to keep among one prompt's images (the earliest on ties)."""
        if self.select_by == "p_right":
            key = list(probs)
        elif self.select_by == "clip_score":
            key = [r.clip_score for r in reports]
        else:
            key = [_region(r)[0] for r in reports]
        return max(range(len(key)), key=lambda j: (key[j], -j))

    def probabilities(self, reports: Sequence[MisalignmentReport]) -> list[float]:
        """P(right) for each image of one prompt (`reports`: all of that prompt's images)."""
        idx = [FEATURES.index(f) for f in self.features]
        out = []
        for row in image_features(reports, self.unit):
            z = self.intercept
            for k, i in enumerate(idx):
                z += self.coef[k] * (row[i] - self.mean[k]) / self.scale[k]
            out.append(1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0))))
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        extras = d.pop("extras")
        return {"kind": CARD_KIND, "version": 1, **d, **extras}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Verifier:
        """Read a card; a missing or malformed file is an `InputError` naming it."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"verifier card not found: {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not JSON ({e.msg})") from None
        if not isinstance(d, dict) or d.get("kind") != CARD_KIND:
            raise InputError(f"{path} is not a clip4dm verifier card (kind {CARD_KIND!r})")
        d = {k: v for k, v in d.items() if k not in ("kind", "version")}
        own = {f.name for f in fields(cls)} - {"extras"}
        extras = {k: d.pop(k) for k in list(d) if k not in own}
        try:
            return cls(**d, extras=extras)
        except TypeError as e:
            raise InputError(f"{path}: {e}") from None


def fit_verifier(
    groups: Sequence[Sequence[MisalignmentReport]],
    labels: Sequence[Sequence[bool]],
    *,
    unit: float,
    false_accept_rate: float = 0.05,
    features: Sequence[str] = FEATURES,
    detector: str = "",
    threshold: float | None = None,
    folds: int = 5,
    seed: int = 0,
) -> Verifier:
    """Fit a verifier on labelled generated images, grouped by prompt (`groups[g]`: the
    reports of prompt g's images, `labels[g]`: whether each is right).

    L2-regularised logistic regression (strength chosen by grouped cross-validated log-loss);
    the card records the grouped cross-validated AUC and selection accuracy (share of prompts
    whose top-P image is right, vs CLIPScore's), and the stop level: the
    lowest P that at most `false_accept_rate` of the wrong images reach."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import GroupKFold

    if len(groups) != len(labels) or any(len(g) != len(y) for g, y in zip(groups, labels)):
        raise ValueError("groups and labels differ in shape")
    if not 0 < false_accept_rate < 1:
        raise ValueError(f"false_accept_rate must lie in (0, 1), got {false_accept_rate}")
    idx = [FEATURES.index(f) for f in features]
    X = np.array([row for g in groups for row in image_features(g, unit)])[:, idx]
    y = np.array([bool(v) for ys in labels for v in ys])
    gid = np.array([g for g, ys in enumerate(labels) for _ in ys])
    if y.all() or not y.any():
        raise ValueError("the labels need both right and wrong images")
    mean, scale = X.mean(0), X.std(0)
    scale[scale == 0] = 1.0
    Z = (X - mean) / scale
    k = max(2, min(folds, len(groups)))
    cv = list(GroupKFold(n_splits=k).split(Z, y, gid))
    best = None
    for C in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0):
        p = np.zeros(len(y))
        for tr, te in cv:
            if y[tr].all() or not y[tr].any():
                p[te] = y[tr].mean()
                continue
            m = LogisticRegression(C=C, max_iter=2000).fit(Z[tr], y[tr])
            p[te] = m.predict_proba(Z[te])[:, 1]
        loss = log_loss(y, np.clip(p, 1e-6, 1 - 1e-6))
        if best is None or loss < best[0]:
            best = (loss, C, p)
    loss, C, p_cv = best
    model = LogisticRegression(C=C, max_iter=2000).fit(Z, y)
    p_fit = model.predict_proba(Z)[:, 1]
    # stop level on cross-validated P (the fitted P is optimistic): the lowest level that at
    # most `false_accept_rate` of wrong images reach
    wrong = np.sort(p_cv[~y])[::-1]
    n_ok = int(math.floor(false_accept_rate * len(wrong)))
    level = float(wrong[n_ok]) + 1e-9 if n_ok < len(wrong) else 0.0
    clip = X[:, features.index("clip_score")] if "clip_score" in features else None

    def selection(score) -> float:
        """Share of prompts whose top-scored image is right."""
        keys = np.unique(gid)
        return float(np.mean([y[gid == g][int(np.argmax(score[gid == g]))] for g in keys]))

    stats = {
        "n_images": int(len(y)),
        "n_prompts": len(groups),
        "n_right": int(y.sum()),
        "C": C,
        "cv_log_loss": float(loss),
        "cv_auc": float(roc_auc_score(y, p_cv)),
        "cv_selection_accuracy": selection(p_cv),
        "fit_auc": float(roc_auc_score(y, p_fit)),
        "stop_level_right_accepted": float((p_cv[y] >= level).mean()),
    }
    select_by, best_sel = "p_right", stats["cv_selection_accuracy"]
    if clip is not None:
        stats["clip_score_auc"] = float(roc_auc_score(y, clip))
        stats["clip_score_selection_accuracy"] = selection(clip)
        if stats["clip_score_selection_accuracy"] >= best_sel:
            select_by, best_sel = "clip_score", stats["clip_score_selection_accuracy"]
    if "region_score" in features:
        reg = X[:, list(features).index("region_score")]
        stats["region_score_auc"] = float(roc_auc_score(y, reg))
        stats["region_score_selection_accuracy"] = selection(reg)
        if stats["region_score_selection_accuracy"] > best_sel:
            select_by, best_sel = "region_score", stats["region_score_selection_accuracy"]
    return Verifier(
        list(features),
        mean.tolist(),
        scale.tolist(),
        model.coef_[0].tolist(),
        float(model.intercept_[0]),
        float(unit),
        level,
        false_accept_rate,
        detector,
        threshold,
        stats,
        select_by,
    )
