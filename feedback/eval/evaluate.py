"""Run a detector over a benchmark and compute the paper's metrics, overall and per kind.

Per benchmark, the metrics follow the authors' evaluation (naver-ai/clip4dm `main.py`):

LA (`LA_RULES`), over the foiled captions:
    most-negative (FOIL, nocaps-FOIL, ShapesWorld): the most negative word is the foil word;
    phrase (HAT): the threshold-flagged words are merged into runs of adjacent words, and the
        run with the lowest mean score must consist of hallucinated words only;
    any-flagged (Rich-HF): at least one threshold-flagged word is a misaligned token;
    SeeTRUE-Feedback has no LA (its score is the NLI).
AP (`AP_POSITIVE`): the original or the foiled captions as the positive class.
NLI (SeeTRUE-Feedback): P(entailment) of the annotated misalignment (premise) entailing the
    flagged phrases joined by ", " (hypothesis), 0 when nothing is flagged; mean over pairs.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..formulas import f_clip_score, select_misaligned, sum_negative_attribution
from ..report import MisalignmentReport
from ..words import split_words
from .datasets import BENCHMARKS, Sample
from .metrics import (
    AP_CONVENTIONS,
    AP_POSITIVE,
    average_precision,
    correlations,
    localization_accuracy,
    spans_overlap,
    word_prf,
)

DEFAULT_SWEEP = (0.0, -1e-6, -1e-5, -5e-5, -1e-4, -5e-4, -1e-3)

LA_RULES = {
    "foil": "most-negative",
    "nocaps-foil": "most-negative",
    "shapes-foil": "most-negative",
    "hat": "phrase",
    "richhf": "any-flagged",
    "seetrue": None,
}


@dataclass
class EvalResult:
    """Metrics of one detector on one benchmark. NaN where the benchmark lacks the labels."""

    benchmark: str
    settings: dict
    n_samples: int
    metrics: dict
    per_kind: dict = field(default_factory=dict)
    threshold_sweep: list = field(default_factory=list)
    seconds: float = 0.0
    #: the same metrics by the number of objects the caption names ("1-object", "2-object",
    #: "3+-object"; `feedback.regions.parse_structure`), when the benchmark has several
    per_objects: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _shapes_labels(s: Sample) -> list[tuple[int, int, int]]:
    """Word labels for a ShapesWorld pair: 1 on the foil word, 0 on every other word."""
    return [
        (w.start, w.end, int(any(spans_overlap((w.start, w.end), f) for f in s.foil_spans)))
        for w in split_words(s.caption)
        if not w.is_punctuation
    ]


def _token_predictions(report: MisalignmentReport, chosen: set[int], labels) -> list[int]:
    spans = [(w.start, w.end) for i, w in enumerate(report.words) if i in chosen]
    return [int(any(spans_overlap((a, b), sp) for sp in spans)) for a, b, _ in labels]


def flagged_phrases(chosen: list[int], eligible: list[bool]) -> list[list[int]]:
    """Runs of flagged words that are adjacent once punctuation is skipped, in caption order
    (word indices). E.g. flagged "red", "car" in "a red, car" form one phrase."""
    rank = {i: k for k, i in enumerate(i for i, e in enumerate(eligible) if e)}
    phrases: list[list[int]] = []
    for i in sorted(chosen):
        if phrases and rank[i] == rank[phrases[-1][-1]] + 1:
            phrases[-1].append(i)
        else:
            phrases.append([i])
    return phrases


def _hits_foil(report: MisalignmentReport, i: int, sample: Sample) -> bool:
    w = report.words[i]
    return any(spans_overlap((w.start, w.end), f) for f in sample.foil_spans)


def _la_hit(rule: str, row: dict, picker: str) -> bool:
    """Whether the detector localized the misalignment of one foiled caption (see LA_RULES)."""
    s, r = row["sample"], row["report"]
    if rule == "most-negative" or picker == "random":
        return bool(row["pick"]) and _hits_foil(r, row["pick"][0], s)
    if rule == "any-flagged":
        return any(_hits_foil(r, i, s) for i in row["chosen_thr"])
    # "phrase": the run of adjacent flagged words with the lowest mean score, all hallucinated.
    phrases = flagged_phrases(row["chosen_thr"], row["eligible"])
    if not phrases:
        return False
    best = min(phrases, key=lambda ph: sum(row["scores"][i] for i in ph) / len(ph))
    return all(_hits_foil(r, i, s) for i in best)


def _nli_pair(row: dict) -> tuple[str, str | None]:
    """(premise, hypothesis) of the SeeTRUE NLI: the annotated misalignment, and the flagged
    phrases joined by ", " (None when nothing is flagged), both lowercased."""
    words = row["report"].words
    phrases = flagged_phrases(row["chosen_thr"], row["eligible"])
    hyp = ", ".join(" ".join(words[i].word for i in ph) for ph in phrases)
    return row["sample"].misalignment_text.lower(), (hyp.lower() or None)


def evaluate(
    reports: list[MisalignmentReport],
    samples: list[Sample],
    *,
    benchmark: str,
    threshold: float = -5e-5,
    mode: str | None = None,
    picker: str = "most-negative",
    content_word: Callable[[str], bool] | None = None,
    sweep=DEFAULT_SWEEP,
    seed: int = 0,
    settings: dict | None = None,
    seconds: float = 0.0,
    ap_positive: str | None = None,
    nli: Callable[[list[str], list[str]], list[float]] | None = None,
) -> EvalResult:
    """Metrics from finished reports (so one detector run serves every threshold and mode).

    picker: "most-negative" (CLIP4DM's localization) or "random" (a random non-punctuation
        word: the chance baseline for LA, whatever the benchmark's LA rule).
    content_word: predicate for the "content words only" LA (e.g. ShapesWorld's vocabulary).
    ap_positive: "original" or "foil", AP's positive class (default: the paper's choice for
        the benchmark, `AP_POSITIVE`); every metrics row records it as "ap_positive".
    nli: (premises, hypotheses) -> P(entailment) each, e.g. `nli_entailment` bound to a
        model; when given, the samples with a misalignment text get the SeeTRUE "nli" score.
    """
    mode = mode or BENCHMARKS.get(benchmark, (None, "threshold"))[1]
    ap_positive = ap_positive or AP_POSITIVE.get(benchmark, "original")
    if ap_positive not in AP_CONVENTIONS:
        raise ValueError(f"ap_positive must be one of {AP_CONVENTIONS}, got {ap_positive!r}")
    la_rule = LA_RULES.get(benchmark, "most-negative")
    rng = np.random.default_rng(seed)
    rows = []
    for s, r in zip(samples, reports):
        scores = [w.score for w in r.words]
        eligible = [not sw.is_punctuation for sw in split_words(r.caption)]
        content = (
            [e and content_word(w.word) for e, w in zip(eligible, r.words)]
            if content_word
            else None
        )

        def pick_from(allowed, scores=scores):
            if picker == "random":
                cand = [i for i, (e, sc) in enumerate(zip(allowed, scores)) if e and sc is not None]
                return [int(rng.choice(cand))] if cand else []
            return select_misaligned(scores, mode="most-negative", eligible=allowed)

        pick = pick_from(eligible)
        pick_c = pick_from(content) if content else None
        chosen = select_misaligned(scores, mode=mode, threshold=threshold, eligible=eligible)
        # Word P/R/F1 always judge the threshold-mode words (the paper's protocol).
        chosen_thr = select_misaligned(
            scores, mode="threshold", threshold=threshold, eligible=eligible
        )
        labels = (
            s.word_labels
            if s.word_labels is not None
            else (_shapes_labels(s) if benchmark == "shapes-foil" else None)
        )
        rows.append(
            dict(
                sample=s,
                report=r,
                scores=scores,
                eligible=eligible,
                pick=pick,
                pick_c=pick_c,
                chosen=chosen,
                chosen_thr=chosen_thr,
                labels=labels,
            )
        )

    if nli is not None:
        asked = [
            (row, *_nli_pair(row)) for row in rows if row["sample"].misalignment_text is not None
        ]
        to_run = [(row, p, h) for row, p, h in asked if h is not None]
        probs = nli([p for _, p, _ in to_run], [h for _, _, h in to_run]) if to_run else []
        for row, *_ in asked:
            row["nli"] = 0.0
        for (row, *_), prob in zip(to_run, probs):
            row["nli"] = float(prob)

    def la(subset) -> float:
        if la_rule is None:
            return math.nan
        hits = [
            _la_hit(la_rule, row, picker) for row in subset if row["sample"].is_original is False
        ]
        return localization_accuracy(hits)

    def la_content(subset) -> float:
        hits = [
            bool(row["pick_c"]) and _hits_foil(row["report"], row["pick_c"][0], row["sample"])
            for row in subset
            if row["sample"].is_original is False
        ]
        return localization_accuracy(hits)

    def fclip(row, chosen) -> float:
        r = row["report"]
        return f_clip_score(sum_negative_attribution(row["scores"], chosen), r.clip_score)

    def labels_of(subset):
        lab = [row["sample"].is_original for row in subset]
        return None if any(x is None for x in lab) else lab

    def ap_clip(subset) -> float:
        lab = labels_of(subset)
        if lab is None:
            return math.nan
        return average_precision(lab, [row["report"].clip_score for row in subset], ap_positive)

    def ap_fclip(subset, chosen_of) -> float:
        lab = labels_of(subset)
        if lab is None:
            return math.nan
        return average_precision(lab, [fclip(row, chosen_of(row)) for row in subset], ap_positive)

    def prf(subset, chosen_of):
        pred, true = [], []
        for row in subset:
            if row["labels"]:
                pred += _token_predictions(row["report"], set(chosen_of(row)), row["labels"])
                true += [lab for _, _, lab in row["labels"]]
        return word_prf(pred, true)

    def summary(subset) -> dict:
        out = {
            "n": len(subset),
            "la": la(subset),
            "ap_clipscore": ap_clip(subset),
            "ap_fclipscore": ap_fclip(subset, lambda row: row["chosen"]),
            "ap_positive": ap_positive,
        }
        if content_word:
            out["la_content"] = la_content(subset)
        originals = [row for row in subset if row["sample"].is_original]
        if originals:  # correct captions with any word flagged at the threshold
            out["false_flags"] = float(np.mean([bool(row["chosen_thr"]) for row in originals]))
        out.update(prf(subset, lambda row: row["chosen_thr"]))
        scored = [row["nli"] for row in subset if "nli" in row]
        if scored:
            out["nli"] = float(np.mean(scored))
        human = [
            (fclip(row, row["chosen"]), row["sample"].human_score)
            for row in subset
            if row["sample"].human_score is not None
        ]
        if human:
            out.update(correlations(*map(list, zip(*human))))
        return out

    metrics = summary(rows)
    per_kind = {}
    kinds = defaultdict(list)
    for row in rows:
        if row["sample"].kind:
            kinds[row["sample"].kind].append(row)
    for k, sub in sorted(kinds.items()):
        per_kind[k] = summary(sub)
    # by the number of objects the caption names (`feedback.regions.parse_structure`)
    from ..regions import parse_structure

    by_objects = defaultdict(list)
    for row in rows:
        n = len(parse_structure(row["sample"].caption).phrases)
        by_objects[f"{n}-object" if n < 3 else "3+-object"].append(row)
    per_objects = {}
    if len(by_objects) > 1:
        for k, sub in sorted(by_objects.items()):
            per_objects[k] = summary(sub)
    sweep_rows = []
    for eps in sweep:
        # One threshold-mode selection per row and eps, shared by P/R/F1 and the AP.
        chosen = {
            id(row): select_misaligned(
                row["scores"], mode="threshold", threshold=eps, eligible=row["eligible"]
            )
            for row in rows
        }

        def chosen_at(row, chosen=chosen):
            return chosen[id(row)]

        sweep_rows.append(
            {"threshold": eps, **prf(rows, chosen_at), "ap_fclipscore": ap_fclip(rows, chosen_at)}
        )
    return EvalResult(
        benchmark,
        {
            "mode": mode,
            "threshold": threshold,
            "picker": picker,
            "ap_positive": ap_positive,
            **(settings or {}),
        },
        len(samples),
        metrics,
        per_kind,
        sweep_rows,
        seconds,
        per_objects,
    )


def detect_samples(
    detector, samples: list[Sample], *, progress: bool = True, regions: bool = False
):
    """Reports for every sample (batched; region-aware with `regions`, `feedback.regions`)
    and the seconds it took."""
    t = time.perf_counter()
    detect = detector.detect_regions if regions else detector.detect
    reports = detect([s.image for s in samples], [s.caption for s in samples], progress=progress)
    return reports, time.perf_counter() - t


def run_benchmark(
    detector,
    samples: list[Sample],
    *,
    benchmark: str,
    progress: bool = True,
    reports: list[MisalignmentReport] | None = None,
    seconds: float = 0.0,
    **kwargs,
) -> EvalResult:
    """Detect on every sample (unless `reports` from `detect_samples` are given), then
    `evaluate` with the detector's settings recorded."""
    if reports is None:
        reports, seconds = detect_samples(detector, samples, progress=progress)
    settings = {k: v for k, v in detector.config.to_dict().items() if k != "batch_size"}
    settings["model"] = detector.backend.name
    settings.pop("threshold", None)
    settings.pop("mode", None)  # the benchmark's protocol picks the mode unless given
    kwargs.setdefault("threshold", detector.config.threshold)
    return evaluate(
        reports, samples, benchmark=benchmark, settings=settings, seconds=seconds, **kwargs
    )


def nli_entailment(model_path: str, premises: list[str], hypotheses: list[str]) -> list[float]:
    """P(entailment) / (P(entailment) + P(contradiction)) from an MNLI model (e.g.
    facebook/bart-large-mnli), the SeeTRUE-Feedback protocol. Neutral is ignored."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
    ids = {k.lower(): v for k, v in model.config.label2id.items()}
    ent, con = ids["entailment"], ids["contradiction"]
    out = []
    for i in range(0, len(premises), 16):
        enc = tok(
            premises[i : i + 16],
            hypotheses[i : i + 16],
            return_tensors="pt",
            padding=True,
            truncation=True,
        )
        with torch.no_grad():
            logits = model(**enc).logits
        p = logits[:, [con, ent]].softmax(-1)[:, 1]
        out += p.tolist()
    return out


__all__ = [
    "LA_RULES",
    "EvalResult",
    "detect_samples",
    "evaluate",
    "flagged_phrases",
    "nli_entailment",
    "run_benchmark",
]
