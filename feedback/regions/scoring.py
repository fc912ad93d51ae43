"""Score each object phrase on its own region (`score_regions`), zero-shot, with the same CLIP.

Per image: region proposals (split lines, sliding windows, the caller's boxes or a zero-shot
detector's), each isolated once (`isolate`) and encoded once; every phrase's cosine with every
region is one matrix product. Phrases are assigned to regions by the best total cosine under
the relations' geometry (a dead zone) and low overlap; each relation is judged against the
best swapped arrangement; each phrase's words get CLIP4DM's signed attribution on the
phrase's own region, so an attribute word is judged where its object is.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch

from ..fields import fail, number_in, one_of, positive_int
from ..report import MisalignmentReport
from ..words import split_words
from .geometry import (
    Box,
    absolute_margin,
    holds,
    overlap,
    partitions,
    relative_margin,
    sliding_windows,
)
from .isolate import ISOLATIONS, background_colour, isolate
from .report import PhraseResult, RegionReport, RegionWord, RelationResult
from .structure import FUNCTION_WORDS, PromptStructure, Relation, parse_structure

logger = logging.getLogger(__name__)

PROPOSALS = ("auto", "partitions", "windows", "boxes", "detector")
#: The most arrangements (a region per phrase) the assignment search scores per image.
MAX_ARRANGEMENTS = 20_000


@dataclass
class RegionConfig:
    """How regions are proposed, isolated and assigned.

    proposals: "auto" (split lines for two objects or one placed object, sliding windows for
        three or more: measured on ShapesWorld, split lines rank best because each phrase is
        scored where the other object cannot be), "partitions", "windows", "boxes" (the
        caller's, per image) or "detector" (a zero-shot detector, `detector_model`).
    isolation: "fill" (the rest painted in the background colour), "blur" or "crop".
    splits: split-line positions, in sixteenths of the image, along each axis.
    window_scales, window_stride: sliding windows of side scale * min(H, W), moved by stride
        of the side.
    max_overlap: two phrases' regions may share at most this much of the smaller one.
    dead_zone: a placement holds when the centres differ by more than this fraction of the
        image along its axis (GenEval-style); within it, undecided.
    top_k: regions per phrase considered in the assignment search (windows, boxes).
    detector_model: a transformers zero-shot-object-detection model (OWLv2, OWL-ViT, Grounding
        DINO: hub id or local folder) queried with each phrase's noun, for "detector".
    detector_threshold: its score threshold for a box to be kept.
    batch_size: regions encoded per forward.
    relations_by: what a placement is judged by: "phrase" (the stated arrangement's total
        phrase cosine against the swapped one's) or "noun" (each object looked for by its
        article and noun, "a circle", so an attribute that went to the other object is not
        read as the objects being swapped; the whole phrase when two phrases share a noun).
        On ShapesWorld's generated images "phrase" named a truly wrong word more often (0.63
        vs 0.59 of wrong images): a noun without its colour is far from that CLIP's captions.
    """

    proposals: str = "auto"
    isolation: str = "fill"
    splits: tuple[int, ...] = (5, 6, 7, 8, 9, 10, 11)
    window_scales: tuple[float, ...] = (0.45, 0.6)
    window_stride: float = 0.25
    max_overlap: float = 0.3
    dead_zone: float = 0.05
    top_k: int = 8
    detector_model: str | None = None
    detector_threshold: float = 0.1
    batch_size: int = 256
    relations_by: str = "phrase"
    found_ratio: float = 0.2

    def __post_init__(self):
        one_of(self, "proposals", PROPOSALS)
        one_of(self, "isolation", ISOLATIONS)
        if self.proposals == "detector" and not self.detector_model:
            fail(self, "detector_model", 'set with proposals="detector" (an OWLv2 id or folder)')
        number_in(self, "max_overlap", 0, 1)
        number_in(self, "dead_zone", 0, 0.5)
        if self.dead_zone >= 0.5:
            fail(self, "dead_zone", "below 0.5")
        one_of(self, "relations_by", ("noun", "phrase"))
        positive_int(self, "top_k", "batch_size")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Plan:
    """One image's proposals and candidate assignments (region index per phrase)."""

    boxes: list[Box]
    candidates: list[tuple[int, ...]] | None = None  # None: search top_k per phrase


def _partition_plan(st: PromptStructure, size, cfg: RegionConfig) -> _Plan:
    boxes: list[Box] = []
    cands: list[tuple[int, ...]] = []
    # splits across the axis every judged placement states (the others can neither obey nor
    # reverse it); both axes when nothing is placed
    axes = {r.axis for r in st.relations if r.judged}
    for axis, low, high in partitions(size, cfg.splits):
        if len(axes) == 1 and axis not in axes:
            continue
        i = len(boxes)
        boxes += [low, high]
        if len(st.phrases) == 1:
            cands += [(i,), (i + 1,)]
        else:
            cands += [(i, i + 1), (i + 1, i)]
    return _Plan(boxes, cands)


def plan_regions(
    st: PromptStructure, size: tuple[int, int], cfg: RegionConfig, boxes: Sequence[Box] | None
) -> _Plan:
    """Proposals for one image: split lines, windows or given boxes (see `RegionConfig`)."""
    mode = cfg.proposals if cfg.proposals in ("auto", "partitions", "windows") else "auto"
    if boxes is not None:
        h, w = size
        kept = []
        for b in boxes:  # clipped to the image; a box with no area left is dropped
            x0, y0, x1, y1 = (float(v) for v in b)
            c = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
            if c[2] > c[0] and c[3] > c[1]:
                kept.append(c)
        if kept:
            return _Plan(kept)
        logger.info("no usable box given: falling back to %s proposals", cfg.proposals)
    if mode == "auto":
        mode = "partitions" if len(st.phrases) <= 2 else "windows"
    if mode == "partitions" and len(st.phrases) <= 2:
        return _partition_plan(st, size, cfg)
    return _Plan(sliding_windows(size, cfg.window_scales, cfg.window_stride))


def _relation_margin(rel: Relation, chosen: Sequence[Box], size) -> float | None:
    if not rel.judged:
        return None
    if rel.other is None:
        return absolute_margin(chosen[rel.subject], rel.axis, rel.sign, size)
    return relative_margin(chosen[rel.subject], chosen[rel.other], rel.axis, rel.sign, size)


def assign(
    cos: torch.Tensor,
    boxes: Sequence[Box],
    relations: Sequence[Relation],
    size: tuple[int, int],
    *,
    candidates: Sequence[tuple[int, ...]] | None = None,
    top_k: int = 8,
    max_overlap: float = 0.3,
    dead_zone: float = 0.05,
    relation_cos: torch.Tensor | None = None,
) -> tuple[tuple[int, ...], float, list[float | None]]:
    """The phrases' regions: the arrangement with the best total cosine that obeys every
    judged relation (beyond the dead zone) with overlaps of at most `max_overlap`; and for
    each relation the stated arrangement's total minus the best total of arrangements that
    reverse it (its margin; None when it is not judged or nothing reverses it).

    cos: (R, P) cosine of region r with phrase p. candidates: arrangements to consider (a
    region index per phrase); default: every combination of each phrase's `top_k` regions.
    relation_cos: (R, P) the cosines relations are judged by (default `cos`): where each
        object *is* may be better told by its noun alone ("a circle") than by the whole
        phrase, whose attributes may belong to the other object.
    Returns (region index per phrase, the stated total, margin per relation). When no
    arrangement obeys the relations, the best one overall is returned with its total."""
    c = cos.detach().float().cpu()
    n_p = c.shape[1]
    searched = candidates is None
    if candidates is None:
        # each phrase's best regions, at most MAX_ARRANGEMENTS combinations in all (a long
        # prompt of many phrases gets fewer regions per phrase, down to its single best)
        k = min(top_k, c.shape[0], max(1, int(MAX_ARRANGEMENTS ** (1 / max(n_p, 1)))))
        tops = [c[:, p].topk(k).indices.tolist() for p in range(n_p)]
        candidates = list(itertools.product(*tops))
    out = _assign(c, boxes, relations, size, candidates, max_overlap, dead_zone, relation_cos)
    unjudged = any(m is None and r.judged for m, r in zip(out[2], relations))
    if searched and unjudged and c.shape[0] ** n_p <= MAX_ARRANGEMENTS:
        # nothing among each phrase's best regions reverses a placement: look at every
        # arrangement, so the margin says how far the best reversal is
        every = list(itertools.product(range(c.shape[0]), repeat=n_p))
        out = _assign(c, boxes, relations, size, every, max_overlap, dead_zone, relation_cos)
    return out


def _assign(c, boxes, relations, size, candidates, max_overlap, dead_zone, relation_cos):
    n_p = c.shape[1]
    rc = c if relation_cos is None else relation_cos.detach().float().cpu()
    stated_rel = -math.inf
    best_ok, best_any = None, None
    reversed_best: list[float] = [-math.inf] * len(relations)
    for cand in candidates:
        chosen = [boxes[i] for i in cand]
        if n_p > 1 and any(
            overlap(chosen[a], chosen[b]) > max_overlap
            for a in range(n_p)
            for b in range(a + 1, n_p)
        ):
            continue
        total = float(sum(c[i, p] for p, i in enumerate(cand)))
        rtotal = total if relation_cos is None else float(sum(rc[i, p] for p, i in enumerate(cand)))
        verdicts = []
        for j, rel in enumerate(relations):
            m = _relation_margin(rel, chosen, size)
            v = None if m is None else holds(m, dead_zone)
            verdicts.append(v)
            if v is False and rtotal > reversed_best[j]:
                reversed_best[j] = rtotal
        if best_any is None or total > best_any[1]:
            best_any = (cand, total)
        if all(
            v is not False and (v is True or not rel.judged) for v, rel in zip(verdicts, relations)
        ):
            if best_ok is None or total > best_ok[1]:
                best_ok = (cand, total)
            stated_rel = max(stated_rel, rtotal)
    if best_any is None:  # every arrangement overlaps: take each phrase's best region
        cand = tuple(int(c[:, p].argmax()) for p in range(n_p))
        best_any = (cand, float(sum(c[i, p] for p, i in enumerate(cand))))
    chosen_cand, total = best_ok if best_ok is not None else best_any
    margins: list[float | None] = []
    for j, rel in enumerate(relations):
        if not rel.judged or reversed_best[j] == -math.inf:
            margins.append(None)
        elif best_ok is None:  # nothing obeys the stated geometry
            margins.append(-abs(reversed_best[j]) - 1e-9)
        else:
            margins.append(stated_rel - reversed_best[j])
    return tuple(chosen_cand), total, margins


def found_objects(best_lifts: Sequence[float], ratio: float) -> list[bool]:
    """Which phrases were found anywhere: a phrase's best lift over a blank image (its cosine
    on its best region minus on the background alone) must be positive and at least `ratio`
    of the best-found phrase's (a sliver of another object lifts a missing one a little;
    relative, so it means the same on any CLIP's cosine scale)."""
    top = max(best_lifts) if best_lifts else 0.0
    return [v > 0 and v >= ratio * top for v in best_lifts]


def _noun_query(phrase) -> str:
    """What an object is looked for by when judging where it is: its article and noun ("a
    circle" for "a small red circle")."""
    first = phrase.text.split()[0].lower() if phrase.text.split() else ""
    noun = phrase.noun
    return f"{first} {noun}" if first in ("a", "an", "the") and noun.lower() != first else noun


def combined_score(
    phrase_cos: Sequence[float], found: Sequence[bool], margins: Sequence[float | None]
) -> float:
    """One number per image, higher = more aligned: the weakest phrase's cosine on its region
    plus every failed relation's (negative) margin. A minimum, so a failed phrase (a missing
    object's included: nothing on its region matches it) or relation pulls it down however
    good the others are. `found` is not counted again: on ShapesWorld a fixed penalty for a
    missing object cost 5 points of selection (the found test misfires on right images)."""
    del found
    s = min(phrase_cos)
    s += sum(min(0.0, m) for m in margins if m is not None)
    return float(s)


def _whole_words(rep: MisalignmentReport) -> list[RegionWord]:
    return [RegionWord(w.word, w.start, w.end, w.score, w.misaligned) for w in rep.words]


def whole_image_region_report(rep: MisalignmentReport, size, regional=False) -> RegionReport:
    """The whole-image report as a `RegionReport` (one phrase, nothing placed: unchanged)."""
    return RegionReport(
        rep.caption,
        _whole_words(rep),
        rep.cosine,
        rep.clip_score,
        rep.sum_negative_attribution,
        rep.f_clip_score,
        rep.truncated,
        score=float(rep.cosine),
        size=tuple(size),
        regional=regional,
    )


def score_regions(
    detector,
    images: torch.Tensor,
    captions: Sequence[str],
    *,
    config: RegionConfig | None = None,
    boxes: Sequence[Sequence[Box] | None] | None = None,
    whole: Sequence[MisalignmentReport] | None = None,
    proposer: Callable | None = None,
) -> list[RegionReport]:
    """Region-aware reports for a batch (see the module docstring).

    detector: a `MisalignmentDetector`. images: (B, 3, H, W) floats in [0, 1] on any device.
    boxes: per image, proposals in pixels (overrides `config.proposals`), or None.
    whole: the whole-image reports of the same pairs, when the caller has them (the loop).
    proposer: for "detector" proposals, `(images, structures) -> per image boxes`.
    """
    from ..detector import reports_from_output

    cfg = config or RegionConfig()
    n = images.shape[0]
    if len(captions) != n:
        raise ValueError(f"got {n} images but {len(captions)} captions")
    if boxes is not None and len(boxes) != n:
        raise ValueError(f"boxes: got {len(boxes)} lists for {n} images")
    size = (int(images.shape[-2]), int(images.shape[-1]))
    if whole is None:
        whole = reports_from_output(detector.score(images, list(captions)))
    structures = [parse_structure(c) for c in captions]
    out: list[RegionReport | None] = [None] * n
    todo = [b for b in range(n) if structures[b].regional and structures[b].phrases]
    for b in range(n):
        if b not in todo:
            out[b] = whole_image_region_report(whole[b], size)
    if not todo:
        return out  # type: ignore[return-value]
    given = list(boxes) if boxes is not None else [None] * n
    if cfg.proposals == "detector" and boxes is None:
        if proposer is None:
            from .proposals import ZeroShotProposer

            proposer = ZeroShotProposer(cfg.detector_model, threshold=cfg.detector_threshold)
        found = proposer(images[todo], [structures[b] for b in todo])
        for b, bx in zip(todo, found):
            given[b] = bx if bx else None
    plans = {b: plan_regions(structures[b], size, cfg, given[b]) for b in todo}

    # every region of the batch (plus one blank per image) isolated and encoded once
    index, flat = [], []
    for b in todo:
        index += [b] * (len(plans[b].boxes) + 1)
        flat += list(plans[b].boxes) + [(0.0, 0.0, 0.0, 0.0)]
    fill = background_colour(images)
    backend = detector.backend
    embs = []
    with torch.no_grad():
        for i in range(0, len(flat), cfg.batch_size):
            reg = isolate(
                images,
                index[i : i + cfg.batch_size],
                flat[i : i + cfg.batch_size],
                cfg.isolation,
                fill=fill,
            )
            embs.append(backend.encode_image(backend.preprocess_tensor(reg)).float())
        emb = torch.nn.functional.normalize(torch.cat(embs), dim=-1)
        phrases = [p for b in todo for p in structures[b].phrases]
        texts = {p.text for p in phrases}
        if cfg.relations_by == "noun":  # the noun queries only when relations are judged by them
            texts |= {_noun_query(p) for p in phrases}
        texts = sorted(texts)
        t = detector.text_embeddings(texts)
    col = {s: i for i, s in enumerate(texts)}

    # assignment per image, then one attribution pass for every (image, phrase) on its region
    pos, att_img, att_box, att_text, results = 0, [], [], [], {}
    for b in todo:
        st, plan = structures[b], plans[b]
        r = len(plan.boxes)
        e = emb[pos : pos + r + 1]
        pos += r + 1
        cos = e @ t[[col[p.text] for p in st.phrases]].T  # (R + 1, P)
        blank = cos[-1]
        rel_cos = None
        nouns = [_noun_query(p) for p in st.phrases]
        if cfg.relations_by == "noun" and len(set(nouns)) == len(nouns):
            rel_cos = (e @ t[[col[q] for q in nouns]].T)[:-1]
        cand, _, margins = assign(
            cos[:-1],
            plan.boxes,
            st.relations,
            size,
            candidates=plan.candidates,
            top_k=cfg.top_k,
            max_overlap=cfg.max_overlap,
            dead_zone=cfg.dead_zone,
            relation_cos=rel_cos,
        )
        chosen = [plan.boxes[i] for i in cand]
        pc = [float(cos[i, p]) for p, i in enumerate(cand)]
        lifts = [pc[p] - float(blank[p]) for p in range(len(pc))]
        found = found_objects((cos[:-1] - blank).max(dim=0).values.tolist(), cfg.found_ratio)
        results[b] = (chosen, pc, lifts, found, margins)
        for p, ph in enumerate(st.phrases):
            att_img.append(b)
            att_box.append(chosen[p])
            att_text.append(ph.text)
    regions = isolate(images, att_img, att_box, cfg.isolation, fill=fill)
    att = []
    bs = detector.config.batch_size
    for i in range(0, len(att_text), bs):
        att += reports_from_output(
            detector.score(regions[i : i + bs], att_text[i : i + bs], nan_policy="mask")
        )
    k = 0
    eps = detector.config.threshold
    for b in todo:
        st = structures[b]
        reps = att[k : k + len(st.phrases)]
        k += len(st.phrases)
        out[b] = _assemble(whole[b], st, results[b], reps, eps, size, detector.config.mode)
    return out  # type: ignore[return-value]


def _assemble(rep, st, res, phrase_reps, eps, size, mode="threshold") -> RegionReport:
    chosen, pc, lifts, found, margins = res
    # each phrase word's attribution on its own region, by character span in the prompt
    attr: dict[tuple[int, int], float | None] = {}
    for ph, prep in zip(st.phrases, phrase_reps):
        for w in prep.words:
            attr[(ph.start + w.start, ph.start + w.end)] = w.score
    rel_of: dict[tuple[int, int], int] = {}
    for j, rel in enumerate(st.relations):
        if rel.judged:
            for w in split_words(rel.text):
                if w.text.lower() not in FUNCTION_WORDS:
                    rel_of[(rel.start + w.start, rel.start + w.end)] = j
    rel_results = []
    for j, rel in enumerate(st.relations):
        m = margins[j]
        objs_found = found[rel.subject] and (rel.other is None or found[rel.other])
        verdict = None if m is None or not objs_found else m >= eps
        rel_results.append(
            RelationResult(
                rel.text, rel.start, rel.end, rel.subject, rel.other, rel.axis, rel.sign, verdict, m
            )
        )
    words = []
    for w in rep.words:
        key = (w.start, w.end)
        owner = next(
            (p for p, ph in enumerate(st.phrases) if ph.start <= w.start and w.end <= ph.end), None
        )
        content = w.word.lower().strip(".,;:!?") not in FUNCTION_WORDS and any(
            ch.isalnum() for ch in w.word
        )
        if owner is not None and key in attr and attr[key] is not None and w.score is not None:
            s = attr[key]
            if not found[owner]:
                # found nowhere: its noun first (the object itself is what is missing), then
                # its other content words, all below eps by how little the phrase lifted
                if content:
                    noun = w.word == st.phrases[owner].noun
                    s = min(s, lifts[owner] + eps * (2.0 if noun else 1.0))
                mis = content or s < eps
                words.append(
                    RegionWord(w.word, w.start, w.end, s, mis, chosen[owner], "missing", owner)
                )
            else:
                words.append(
                    RegionWord(
                        w.word,
                        w.start,
                        w.end,
                        s,
                        content and s < eps,
                        chosen[owner],
                        "attribute",
                        owner,
                    )
                )
        elif key in rel_of and rel_results[rel_of[key]].margin is not None:
            rr = rel_results[rel_of[key]]
            s = float(rr.margin)
            words.append(
                RegionWord(
                    w.word,
                    w.start,
                    w.end,
                    s,
                    rr.holds is False,
                    chosen[rr.subject],
                    "relation",
                    None,
                )
            )
        else:
            words.append(
                RegionWord(w.word, w.start, w.end, w.score, w.misaligned, None, "image", owner)
            )
    if mode != "threshold":  # the single most negative word (the detector's other mode)
        scored = [
            i
            for i, w in enumerate(words)
            if w.score is not None and any(ch.isalnum() for ch in w.word)
        ]
        low = min(scored, key=lambda i: words[i].score) if scored else None
        words = [replace(w, misaligned=i == low) for i, w in enumerate(words)]
    neg = sum(w.score for w in words if w.misaligned and w.score is not None)
    phrases = [
        PhraseResult(
            ph.text, ph.start, ph.end, tuple(float(v) for v in chosen[p]), pc[p], lifts[p], found[p]
        )
        for p, ph in enumerate(st.phrases)
    ]
    return RegionReport(
        rep.caption,
        words,
        rep.cosine,
        rep.clip_score,
        neg,
        neg * (1 - rep.clip_score / 2.5),
        rep.truncated,
        score=combined_score(pc, found, margins),
        phrases=phrases,
        relations=rel_results,
        size=tuple(size),
        regional=True,
    )
