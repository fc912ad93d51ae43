"""The pixel oracle: which words of a caption does an image (rendered or generated) satisfy?"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .captions import caption_words, parse_caption
from .render import shape_mask
from .vocabulary import COLORS, RELATIONS, SHAPES, SIZES, WORD_KINDS


@dataclass(frozen=True)
class DetectedObject:
    """An object found in the pixels. Coordinates in pixels of the analysed image."""

    color: str
    shape: str
    size: str
    cx: float
    cy: float
    extent: float
    area: int


@dataclass(frozen=True)
class WordVerdict:
    """The oracle's verdict on one caption word; [start, end) is its character span in the
    caption, the same word and span the detector reports (punctuation words included)."""

    word: str
    kind: str | None
    correct: bool | None  # None for function words and punctuation
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class OracleJudgement:
    caption: str
    words: tuple[WordVerdict, ...]
    count_correct: bool
    objects: tuple[DetectedObject, ...]
    #: for each caption phrase (text order), the index of the object it was matched to, or
    #: None (no object left for it)
    assignment: tuple[int | None, ...] = ()

    @property
    def all_correct(self) -> bool:
        return self.count_correct and all(w.correct is not False for w in self.words)

    @property
    def wrong_words(self) -> list[int]:
        return [i for i, w in enumerate(self.words) if w.correct is False]

    def to_dict(self) -> dict:
        return asdict(self)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in 0-255 -> CIE Lab, so "nearest color" means perceptually nearest."""
    c = rgb / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


_PALETTE_NAMES = list(COLORS)
#: Area of each ideal shape as a fraction of its bounding box.
_AREA_FRACTION = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "cross": 5 / 9}
_PALETTE_LAB = _lab(np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float64))


def name_color(rgb: np.ndarray) -> str:
    """Nearest palette color name for an sRGB triple."""
    d = np.linalg.norm(_PALETTE_LAB - _lab(np.asarray(rgb, dtype=np.float64)), axis=-1)
    return _PALETTE_NAMES[int(d.argmin())]


def detect_objects(image: Image.Image, *, min_area: int | None = None) -> list[DetectedObject]:
    """Segment objects from the background and name their color, shape and size.

    Background = median of the border pixels; foreground = pixels far from it in color;
    objects = 4-connected components above `min_area` pixels (default scales with the
    image: 6 px at 32 px).
    """
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w, _ = arr.shape
    scale = w / 32.0
    min_area = int(min_area if min_area is not None else round(6 * scale * scale))
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(arr - bg, axis=-1)
    # Noise (sigma <= 8 per channel) stays below ~40; the dimmest palette color on the
    # brightest background is ~110 away, so a fixed threshold separates both with margin.
    fg = dist > 45.0
    labels, n = ndimage.label(fg)
    out = []
    for k in range(1, n + 1):
        mask = labels == k
        area = int(mask.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(mask)
        # Color from the object's core: the most background-distant half of its pixels.
        d = dist[mask]
        core_rgb = arr[mask][d >= np.median(d)]
        color = name_color(np.median(core_rgb, axis=0))
        # Soft coverage (0..1) of each pixel near the object, so anti-aliased and blurred
        # edges count fractionally instead of inflating the bounding box.
        region = ndimage.binary_dilation(mask, iterations=2) & ((labels == 0) | mask)
        cov = np.clip(dist / np.percentile(d, 90), 0, 1) * region
        soft_area = float(cov.sum())
        cx = float((cov.sum(0) * (np.arange(w) + 0.5)).sum() / soft_area)
        cy = float((cov.sum(1) * (np.arange(h) + 0.5)).sum() / soft_area)
        # Shape: each hypothesis implies an extent (from the area) and a bbox centre (from the
        # centroid); keep the one whose ideal coverage map fits best.
        best = None
        for s in SHAPES:
            extent = float(np.sqrt(soft_area / _AREA_FRACTION[s]))
            by = cy - extent / 6 if s == "triangle" else cy
            err = float(((shape_mask(s, cx, by, extent, (w, h)) - cov) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, s, extent)
        _, shape, extent = best
        size = "large" if extent / scale >= (SIZES["small"] + SIZES["large"]) / 2 else "small"
        out.append(DetectedObject(color, shape, size, float(cx), float(cy), extent, area))
    return out


def _satisfied(obj: DetectedObject, attr: str, word: str) -> bool:
    return getattr(obj, attr) == word


def judge(image: Image.Image, caption: str) -> OracleJudgement:
    """Per-word verdicts for `caption` on `image`.

    Caption phrases are matched to detected objects by the assignment that satisfies the most
    words (positions included), so one wrong word does not make its neighbours look wrong.
    Phrases with no object left (too few objects found) have all their words marked wrong.
    """
    words, phrases, relations = parse_caption(caption)
    objs = detect_objects(image)
    best, best_ok, best_perm = None, -1, ()
    n = len(phrases)
    slots = list(range(len(objs))) + [None] * n
    for perm in set(itertools.permutations(slots, n)) if n else [()]:
        verdict = _evaluate(words, phrases, relations, objs, perm)
        ok = sum(v is True for v in verdict)
        if ok > best_ok:
            best, best_ok, best_perm = verdict, ok, perm
    spans = caption_words(caption)
    verdicts = tuple(
        WordVerdict(text, WORD_KINDS.get(w), best[i], a, b)
        for i, (w, (text, a, b)) in enumerate(zip(words, spans))
    )
    return OracleJudgement(caption, verdicts, len(objs) == n, tuple(objs), tuple(best_perm))


def _evaluate(words, phrases, relations, objs, assignment) -> list[bool | None]:
    out: list[bool | None] = [None] * len(words)
    for p, o in zip(phrases, assignment):
        obj = objs[o] if o is not None else None
        for attr, idx in (("color", p.color), ("shape", p.shape), ("size", p.size)):
            if idx is not None:
                out[idx] = obj is not None and _satisfied(obj, attr, words[idx])
    centers = [(objs[o].cx, objs[o].cy) if o is not None else None for o in assignment]
    for r in relations:
        axis, sign = RELATIONS[r.relation]
        a = 0 if axis == "x" else 1
        subj = centers[r.subject] if r.subject < len(centers) else None
        if r.other is not None:
            other = centers[r.other] if r.other < len(centers) else None
            ok = subj is not None and other is not None and sign * (subj[a] - other[a]) > 0
        else:
            # Absolute ("on the left"): compare with the other described objects, or with the
            # image centre when only one object is described.
            others = [c for j, c in enumerate(centers) if j != r.subject and c is not None]
            ref = np.mean([c[a] for c in others]) if others else None
            ok = subj is not None and ref is not None and sign * (subj[a] - ref) > 0
        out[r.word] = bool(ok)
    return out


_FUNCTION_WORDS = {"a", "an", "the", "and", "of", "to", "on", ",", "."}


def in_grammar(caption: str) -> bool:
    """Whether the oracle can judge `caption`: only ShapesWorld attribute/relation words and
    the grammar's function words (anything else would get meaningless verdicts)."""
    from .captions import caption_words

    words = [w.lower() for w, _, _ in caption_words(caption)]
    allowed = set(WORD_KINDS) | _FUNCTION_WORDS
    return bool(words) and all(w in allowed for w in words) and any(w in SHAPES for w in words)


def oracle_verdicts(image: Image.Image, caption: str) -> tuple[list[bool | None], bool]:
    """(per-word verdicts, whole image right) -- the form report pictures take."""
    j = judge(image, caption)
    return [v.correct for v in j.words], j.all_correct
