"""Pictures of reports: the image beside its caption, each word shaded by its signed score.

Fonts: DejaVu Sans (or Pillow's bundled font) for most scripts; for characters it lacks (CJK,
emoji, ...) any installed font that covers them is found through fontconfig (`fc-list`). A
character no installed font covers cannot be drawn: the figure then says so in a note line
rather than showing empty boxes silently.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

from PIL import Image, ImageDraw, ImageFont

from .report import MisalignmentReport

_PROBE = "\U000f0000"  # a private-use code point no font maps: its glyph is the "missing" box
_BASE_FONTS = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _shade(score: float | None, scale: float) -> tuple[int, int, int]:
    if score is None:
        return (225, 225, 225)
    t = max(-1.0, min(1.0, score / scale)) if scale > 0 else 0.0
    if t < 0:  # red for evidence against the word
        return (255, int(255 * (1 + t * 0.75)), int(255 * (1 + t * 0.75)))
    return (int(255 * (1 - t * 0.6)), 255, int(255 * (1 - t * 0.6)))  # green for support


@functools.lru_cache(maxsize=8)
def _base_font(size: int) -> ImageFont.FreeTypeFont:
    for name in _BASE_FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _has_glyph(font, ch: str) -> bool:
    if ch.isspace():
        return True
    try:
        a, b = font.getmask(ch), font.getmask(_PROBE)
    except Exception:
        return False
    return not (a.size == b.size and bytes(a) == bytes(b))


@functools.lru_cache(maxsize=256)
def _font_file_for(ch: str) -> str | None:
    """An installed font file covering `ch`, via fontconfig; None if none (or no fc-list)."""
    if shutil.which("fc-list") is None:
        return None
    try:
        out = subprocess.run(
            ["fc-list", f":charset={ord(ch):x}", "file"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files = sorted(line.split(":")[0].strip() for line in out.splitlines() if line.strip())
    return next((f for f in files if f.lower().endswith((".ttf", ".otf", ".ttc"))), None)


@functools.lru_cache(maxsize=1024)
def font_for(text: str, size: int):
    """(font, drawable): a font for `text` and whether it covers every character."""
    base = _base_font(size)
    missing = [ch for ch in text if not _has_glyph(base, ch)]
    if not missing:
        return base, True
    path = _font_file_for(missing[0])
    if path is not None:
        try:
            font = ImageFont.truetype(path, size)
            if all(_has_glyph(font, ch) for ch in text):
                return font, True
        except OSError:
            pass
    return base, False


def undrawable_words(report: MisalignmentReport, size: int = 18) -> list[str]:
    """Words of the report that no installed font can draw completely."""
    return [w.word for w in report.words if not font_for(w.word, size)[1]]


def summary_lines(report: MisalignmentReport, font_size: int = 18) -> list[str]:
    """The lines printed under the caption in a figure."""
    lines = [
        f"CLIPScore {report.clip_score:.3f}   F-CLIPScore {report.f_clip_score:.5f}",
        "misaligned: " + (", ".join(report.misaligned_words) or "(none)"),
    ]
    if getattr(report, "regional", False):
        lines.insert(1, f"region score {report.score:.3f} (weakest object on its region)")
        for r in report.relations:
            if r.holds is not None:
                lines.append(
                    f"'{r.text}': {'holds' if r.holds else 'swapped'} (margin {r.margin:+.3f})"
                )
        if report.missing:
            lines.append("missing: " + ", ".join(report.missing))
    if report.truncated:
        lines.append("caption longer than the context: grey words unscored")
    if undrawable_words(report, font_size):
        lines.append("some characters have no installed font (boxes); the JSON report has them")
    return lines


#: Distinct colours for flagged words' boxes (Sasha Trubetskoy's high-contrast set).
PALETTE = (
    (230, 25, 75),
    (0, 130, 200),
    (245, 130, 48),
    (60, 180, 75),
    (145, 30, 180),
    (240, 50, 230),
    (70, 240, 240),
    (128, 128, 0),
)


def word_colours(report: MisalignmentReport) -> dict[int, tuple[int, int, int]]:
    """Index of each flagged word that has a box (`feedback.regions.RegionWord`) -> the colour
    its box and underline are drawn in."""
    flagged = [i for i, w in enumerate(report.words) if w.misaligned and getattr(w, "box", None)]
    return {i: PALETTE[k % len(PALETTE)] for k, i in enumerate(flagged)}


def draw_boxes(image: Image.Image, report: MisalignmentReport, scale: int = 1) -> Image.Image:
    """A copy of `image` enlarged `scale` times (nearest neighbour) with each flagged word's
    box (`word_colours`) drawn in the word's colour; the image unchanged (but enlarged) when
    no flagged word has a box."""
    img = image.convert("RGB")
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    colours = word_colours(report)
    if not colours:
        return img
    draw = ImageDraw.Draw(img)
    sx, sy = img.width / image.width, img.height / image.height
    width = max(1, round(min(sx, sy) / 2))
    for i, c in colours.items():
        x0, y0, x1, y1 = report.words[i].box
        draw.rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=c, width=width)
    return img


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Scale to fit a size x size box, keeping the aspect ratio (nearest-neighbour when
    enlarging, so tiny ShapesWorld images stay crisp)."""
    img = image.convert("RGB")
    scale = size / max(img.width, img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    return img.resize((w, h), Image.NEAREST if scale >= 1 else Image.LANCZOS)


def render_report(
    image: Image.Image, report: MisalignmentReport, *, size: int = 256, width: int = 640
) -> Image.Image:
    """An RGB figure: the image (fitted into a `size` box, aspect kept), the caption with each
    word's background shaded red (negative) or green (positive) in proportion to its score,
    misaligned words underlined, unscored words grey, and the scores underneath. For a
    region report (`feedback.regions.RegionReport`) each flagged word's box is drawn on the
    image in the colour of its underline, and the relations' verdicts are listed. The canvas
    grows with the caption, so long captions keep their summary."""
    font_size, line_h = 18, 34
    small = _base_font(14)
    img = _fit(image, size)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x0 = size + 25
    right = size + width - 10
    boxes, x, y = [], x0, 20
    for w in report.words:
        font, _ = font_for(w.word, font_size)
        tw = min(scratch.textlength(w.word, font=font), right - x0)
        if x + tw > right and x > x0:
            x, y = x0, y + line_h
        boxes.append((w, font, x, y, tw))
        x += tw + 12
    lines = summary_lines(report, font_size)
    y_summary = y + 50
    height = max(size + 20, y_summary + 22 * len(lines) + 10)
    canvas = Image.new("RGB", (size + width, height), "white")
    canvas.paste(img, (10 + (size - img.width) // 2, 10 + (size - img.height) // 2))
    draw = ImageDraw.Draw(canvas)
    # region words judged by geometry carry margins (cosine units), not attributions: the
    # shading scale comes from the attributions so they stay visible
    scored = [
        abs(w.score)
        for w in report.words
        if w.score is not None and getattr(w, "reason", "image") != "relation"
    ]
    scale = max(scored) if scored else 1.0
    colours = word_colours(report)
    for i, (w, font, bx, by, tw) in enumerate(boxes):
        draw.rectangle([bx - 3, by - 2, bx + tw + 3, by + 24], fill=_shade(w.score, scale))
        draw.text((bx, by), w.word, fill="black", font=font)
        if w.misaligned:
            line = colours.get(i, (200, 0, 0))
            draw.line([bx - 3, by + 26, bx + tw + 3, by + 26], fill=line, width=3)
    if colours:  # each flagged word's box on the image, in the word's own colour
        ox, oy = 10 + (size - img.width) // 2, 10 + (size - img.height) // 2
        sx, sy = img.width / image.width, img.height / image.height
        for i, c in colours.items():
            x0_, y0_, x1_, y1_ = report.words[i].box
            draw.rectangle(
                [ox + x0_ * sx, oy + y0_ * sy, ox + x1_ * sx - 1, oy + y1_ * sy - 1],
                outline=c,
                width=2 + i % 2,
            )
    for i, line in enumerate(lines):
        draw.text((x0, y_summary + 22 * i), line, fill=(40, 40, 40), font=small)
    return canvas
