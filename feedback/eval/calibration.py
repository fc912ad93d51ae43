"""Choosing eps: the threshold a loop acts on, calibrated for a false-flag rate.

The paper's eps (-5e-5) was set for ViT-B/32-scale CLIPs; the attribution scale depends on
the model, and on a small model most *correct* captions then get a word flagged. A loop that
re-prompts on every flag would throw away good images. So a shipped model's card carries an
eps calibrated on correct captions of a validation split: the largest eps (closest to 0) at
which at most `rate` of correct captions get any word flagged, and the recall on foils that
this eps keeps. The paper's eps stays available (`threshold=-5e-5`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..report import MisalignmentReport
from .datasets import Sample
from .metrics import spans_overlap

PAPER_THRESHOLD = -5e-5


def lowest_eligible_score(report: MisalignmentReport) -> float:
    """The lowest score among words the detector may flag (scored, not punctuation-only)."""
    from ..words import Word

    scores = [
        w.score
        for w in report.words
        if w.score is not None and not Word(w.word, w.start, w.end).is_punctuation
    ]
    return min(scores) if scores else math.inf


def threshold_for_false_flag_rate(lowest: Sequence[float], rate: float) -> float:
    """The largest eps <= 0 with at most `rate` of the captions having a score below it.

    lowest: per correct caption, its lowest eligible word score.
    A word is flagged when its score < eps, so with the scores sorted ascending, eps =
    sorted[k] for k = floor(rate * n) flags exactly the captions before position k.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    vals = sorted(v for v in lowest if math.isfinite(v))
    if not vals:
        raise ValueError("no scored captions to calibrate on")
    k = int(math.floor(rate * len(vals)))
    return min(vals[k], 0.0)


@dataclass
class ThresholdCalibration:
    """A calibrated eps and what it does on the calibration split.

    false_flag_rate: fraction of correct captions with a word flagged at `threshold`.
    foil_recall: fraction of foil captions whose foil word is flagged.
    foil_detection: fraction of foil captions with any word flagged.
    The `paper_*` fields are the same measures at the paper's eps, for the trade-off.
    """

    threshold: float
    target_false_flag_rate: float
    false_flag_rate: float
    foil_recall: float
    foil_detection: float
    n_correct: int
    n_foils: int
    paper_threshold: float
    paper_false_flag_rate: float
    paper_foil_recall: float

    def to_dict(self) -> dict:
        return asdict(self)


def _rates(pairs, eps: float) -> tuple[float, float, float]:
    originals = [r for s, r in pairs if s.is_original]
    foils = [(s, r) for s, r in pairs if s.is_original is False]
    false_flag = sum(lowest_eligible_score(r) < eps for r in originals) / max(len(originals), 1)
    detect = sum(lowest_eligible_score(r) < eps for _, r in foils) / max(len(foils), 1)
    hit = 0
    for s, r in foils:
        hit += any(
            w.score is not None
            and w.score < eps
            and any(spans_overlap((w.start, w.end), f) for f in s.foil_spans)
            for w in r.words
        )
    return false_flag, hit / max(len(foils), 1), detect


def calibrate_threshold(
    samples: Sequence[Sample], reports: Sequence[MisalignmentReport], rate: float = 0.1
) -> ThresholdCalibration:
    """Calibrate eps on correct captions (`is_original`) and measure it on foils.

    samples/reports: a benchmark with originals and foils (e.g. ShapesWorld's validation
    FOIL set) and the detector's reports on it, in the same order.
    """
    pairs = list(zip(samples, reports))
    lowest = [lowest_eligible_score(r) for s, r in pairs if s.is_original]
    eps = threshold_for_false_flag_rate(lowest, rate)
    ff, recall, detect = _rates(pairs, eps)
    pff, precall, _ = _rates(pairs, PAPER_THRESHOLD)
    return ThresholdCalibration(
        threshold=eps,
        target_false_flag_rate=rate,
        false_flag_rate=ff,
        foil_recall=recall,
        foil_detection=detect,
        n_correct=len(lowest),
        n_foils=sum(s.is_original is False for s in samples),
        paper_threshold=PAPER_THRESHOLD,
        paper_false_flag_rate=pff,
        paper_foil_recall=precall,
    )


def load_labelled(path) -> list[Sample]:
    """Your own generated images, labelled, for `calibrate_threshold`: a JSONL file with one
    `{"image": path, "caption": str, "right": bool, "wrong_words": [str, ...]}` per line
    (`wrong_words` optional: the words the image gets wrong, every occurrence; used for the
    recall). Image
    paths are relative to the file's folder. Raises InputError naming the line at fault."""
    import json
    from pathlib import Path

    from ..errors import InputError
    from .datasets import _spans_of

    path = Path(path)
    if not path.is_file():
        raise InputError(f"labels file not found: {path}")
    samples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: not JSON ({e.msg})") from None
        missing = [k for k in ("image", "caption", "right") if k not in row]
        if missing:
            raise InputError(f"{path}:{n}: missing {', '.join(missing)}")
        if not isinstance(row["right"], bool):
            raise InputError(f"{path}:{n}: 'right' must be true or false, got {row['right']!r}")
        spans = []
        for w in row.get("wrong_words") or []:
            found = _spans_of(row["caption"], w)
            if not found:
                raise InputError(f"{path}:{n}: wrong word {w!r} is not in the caption")
            spans += found
        samples.append(
            Sample(
                str(row.get("id", n)),
                str(path.parent / row["image"]),
                row["caption"],
                is_original=row["right"],
                foil_words=list(row.get("wrong_words") or []),
                foil_spans=spans,
            )
        )
    if not any(s.is_original for s in samples):
        raise InputError(f"{path}: no image labelled right; eps is set on right images")
    return samples
