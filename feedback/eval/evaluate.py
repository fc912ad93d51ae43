"""Run a detector over a benchmark and compute the paper's metrics, overall and per kind."""

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
from .metrics import average_precision, correlations, localization_accuracy, spans_overlap, word_prf

DEFAULT_SWEEP = (0.0, -1e-6, -1e-5, -5e-5, -1e-4, -5e-4, -1e-3)


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
) -> EvalResult:
    """Metrics from finished reports (so one detector run serves every threshold and mode).

    picker: "most-negative" (CLIP4DM's localization) or "random" (a random non-punctuation
        word: the chance baseline for LA).
    content_word: predicate for the "content words only" LA (e.g. ShapesWorld's vocabulary).
    """
    mode = mode or BENCHMARKS.get(benchmark, (None, "threshold"))[1]
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

    def la(subset, key="pick"):
        hits = []
        for row in subset:
            s = row["sample"]
            if s.is_original is False and s.foil_spans and row[key] is not None:
                w = row["report"].words[row[key][0]] if row[key] else None
                hits.append(
                    w is not None and any(spans_overlap((w.start, w.end), f) for f in s.foil_spans)
                )
        return localization_accuracy(hits)

    def fclip(row, chosen) -> float:
        r = row["report"]
        return f_clip_score(sum_negative_attribution(row["scores"], chosen), r.clip_score)

    def labels_of(subset):
        lab = [row["sample"].is_original for row in subset]
        return None if any(x is None for x in lab) else lab

    def ap_clip(subset) -> float:
        lab = labels_of(subset)
        return (
            math.nan
            if lab is None
            else average_precision(lab, [row["report"].clip_score for row in subset])
        )

    def ap_fclip(subset, chosen_of) -> float:
        lab = labels_of(subset)
        return (
            math.nan
            if lab is None
            else average_precision(lab, [fclip(row, chosen_of(row)) for row in subset])
        )

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
        }
        if content_word:
            out["la_content"] = la(subset, "pick_c")
        out.update(prf(subset, lambda row: row["chosen_thr"]))
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
        {"mode": mode, "threshold": threshold, "picker": picker, **(settings or {})},
        len(samples),
        metrics,
        per_kind,
        sweep_rows,
        seconds,
    )


def detect_samples(detector, samples: list[Sample], *, progress: bool = True):
    """Reports for every sample (batched) and the seconds it took."""
    t = time.perf_counter()
    reports = detector.detect(
        [s.image for s in samples], [s.caption for s in samples], progress=progress
    )
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


__all__ = ["EvalResult", "detect_samples", "evaluate", "nli_entailment", "run_benchmark"]
