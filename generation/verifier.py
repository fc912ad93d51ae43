"""How the loop ranks a prompt's images and when it stops.

With a verifier card (`feedback.Verifier`, fitted on this generator's labelled images by
`clip4dm calibrate --verifier`): keep the image the card's rule picks among all the prompt's
images (the highest P(right), or the highest CLIPScore where that kept more right images on
the calibration pool: `select_by`), and stop early only once the kept image's P(right)
reaches the card's `stop_level` (chosen for a stated false-accept rate on the calibration
pool). Without one: today's rule -- F-CLIPScore,
ties by CLIPScore, the earliest on exact ties, and stop when the detector flags nothing --
which the loop says once.

Fixes only where they pay (`gate`): a card may also hold what each fix bought over a fresh
sample on this generator, by the kind of word flagged (`generation.fixes`, measured by
`shapesworld.build.measure_fixes` or from your own labelled trials with
`clip4dm calibrate --fixes`).
A fix round whose measured gain for the kept image's worst flagged word is not above 0 becomes
a fresh sample, recorded as `fix="resample"` with `extra["gated"]` naming the fix it replaced.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from feedback import Verifier

from .fixes import fix_gains, fix_pays
from .phrases import split_phrases, word_phrases
from .selection import best_index
from .strategies.base import RoundPlan

logger = logging.getLogger(__name__)


#: The file a pipeline folder's verifier card is read from (`find_card`).
CARD_FILE = "verifier.json"


def find_card(pipe) -> Path | None:
    """The verifier card beside the pipeline's weights (`<folder>/verifier.json`, where the
    pipeline was loaded from: `pipe.name_or_path`), or None."""
    from .cards import pipeline_folder

    folder = pipeline_folder(pipe)
    path = folder / CARD_FILE if folder is not None else None
    return path if path is not None and path.is_file() else None


def auto_verifier(pipe, detector):
    """`verifier="auto"`: the card beside the pipeline when it was fitted for this detector,
    and the detector at the card's eps (the card's features and stop level were measured
    there); (None, detector) when the pipeline's folder holds no card or one for another
    detector (said once)."""
    from dataclasses import replace

    path = find_card(pipe)
    if path is None:
        return None, detector
    card = Verifier.load(path)
    name = detector.backend.name
    if card.detector and card.detector != name:
        _say_once(
            f"card-{path}-{name}",
            f"the pipeline's verifier card ({path}) was fitted for the detector "
            f"{card.detector!r}, not {name!r}: the loop runs without a card (fit one for this "
            "detector with `clip4dm calibrate --verifier`)",
        )
        return None, detector
    if card.threshold is not None and abs(card.threshold - detector.config.threshold) > 1e-12:
        _say_once(
            f"eps-{path}-{name}-{detector.config.threshold}",
            f"the loop uses the pipeline's verifier card ({path}) and judges at its eps "
            f"{card.threshold:.6g} (the detector was loaded at {detector.config.threshold:.6g}); "
            "pass verifier=None for neither",
        )
        detector = type(detector)(
            detector.backend, replace(detector.config, threshold=card.threshold)
        )
    return card, detector


@functools.cache
def _say_once(key: str, message: str) -> None:
    """`message` logged as a warning the first time `key` is seen in the process (as
    transformers' `warning_once`)."""
    logger.warning(message)


def load_verifier(verifier) -> Verifier | None:
    """A `Verifier`, a card path, or None (no verifier)."""
    if verifier is None or isinstance(verifier, Verifier):
        return verifier
    if isinstance(verifier, (str, Path)):
        return Verifier.load(verifier)
    raise ValueError(f"verifier must be a feedback.Verifier, a card path or None, got {verifier!r}")


def say_no_verifier_once() -> None:
    _say_once(
        "no-card",
        "no verifier card: the loop keeps the best image by the region score (prompts of "
        "two or more objects) or F-CLIPScore (ties by CLIPScore) and stops when the "
        "detector flags nothing; fit a verifier on ~300 "
        "labelled images of your generator with `clip4dm calibrate --verifier` and pass "
        "it as FeedbackPipeline(..., verifier=card)",
    )


def rank(rounds, verifier: Verifier | None, all_rounds: bool = True):
    """(round, index) of the image to keep, and the P(right) of every image per round (empty
    lists without a verifier). The pool is every image made so far (or the last round's with
    `all_rounds=False`); without a verifier `selection.best_index` picks from it."""
    pool = rounds if all_rounds else rounds[-1:]
    finished = [rec for rec in pool if not getattr(rec, "preview", False)]
    if finished and len(finished) < len(pool):
        # previews only choose seeds: once finished images exist, one of them is kept
        pool = finished
    flat = [(rec.round, k, rep) for rec in pool for k, rep in enumerate(rec.reports)]
    reports = [rep for _, _, rep in flat]
    if verifier is None:
        return flat[best_index(reports)][:2], [[] for _ in rounds]
    probs = verifier.probabilities(reports)
    i = verifier.select(reports, probs)
    by_round = {}
    it = iter(probs)
    for rec in pool:
        by_round[rec.round] = [next(it) for _ in rec.reports]
    kept_p = [list(rec.p_right) if getattr(rec, "preview", False) else [] for rec in rounds]
    return flat[i][:2], [by_round.get(rec.round, kept_p[j]) for j, rec in enumerate(rounds)]


def satisfied(report, p_right: float | None, verifier: Verifier | None) -> bool:
    """The early-stop test for the kept image."""
    if verifier is None:
        return not report.misaligned_words
    return p_right is not None and p_right >= verifier.stop_level


#: Words that place an object, wherever they stand ("a red circle on the left" keeps "left"
#: inside the object's phrase).
SPATIAL_WORDS = frozenset(
    "left right top bottom above below under beneath behind front beside near next "
    "over upper lower middle center centre".split()
)


def say_if_gated(config, verifier: Verifier | None) -> None:
    """Warn when the card measured the chosen strategy's fix as never beating a fresh sample:
    its rounds will re-sample (a user who asked for `reweight` should know why)."""
    if verifier is None or not config.gate_fixes:
        return
    name = config.strategy.name
    cells = fix_gains(verifier).get(name, {})
    if cells and all(fix_pays(verifier, name, k) is False for k in cells):
        logger.warning(
            f"the verifier card measured {name} beating a fresh sample for no kind "
            "of flagged word on this generator, so its rounds re-sample (recorded as "
            "fix='resample'); LoopConfig(gate_fixes=False) applies the fix anyway"
        )


def flagged_kind(report, prompt: str) -> str | None:
    """The kind of the report's worst (most negative) flagged word: for a region report its
    reason ("relation", "missing", else "object"); otherwise "relation" when it lies
    outside every object phrase of the prompt (`generation.phrases`: "above", "and") or is a
    spatial word (`SPATIAL_WORDS`: "left" in "a circle on the left"), else "object"; None
    when nothing is flagged."""
    flagged = [w for w in report.words if w.misaligned and w.score is not None]
    if not flagged:
        return None
    worst = min(flagged, key=lambda w: w.score)
    reason = getattr(worst, "reason", "image")  # a region-judged word says why it is wrong
    if reason == "relation":
        return "relation"
    if reason == "missing":
        return "missing"
    if reason == "attribute":
        return "relation" if _spatial(worst.word) else "object"
    owner = word_phrases([worst], split_phrases(prompt))[0]
    return "relation" if owner is None or _spatial(worst.word) else "object"


def _spatial(word: str) -> bool:
    return word.lower().strip(".,;:!?") in SPATIAL_WORDS


def gate(plan, state, verifier: Verifier | None):
    """`plan`, or a fresh sample where the card measured `plan.fix` not beating one for the
    kind of word the kept image has flagged (see the module docstring). Plain and resample
    rounds, rounds without a card or without a measurement pass unchanged."""
    if plan is None or verifier is None or plan.fix in ("plain", "resample"):
        return plan
    kind = flagged_kind(state.chosen, state.prompt)
    if kind is None or fix_pays(verifier, plan.fix, kind) is not False:
        return plan
    cell = fix_gains(verifier)[plan.fix][kind]
    return RoundPlan(
        "resample",
        extra={"gated": plan.fix, "kind": kind, "measured_gain": cell["gain"], "n": cell["n"]},
    )
