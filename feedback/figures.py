"""Pictures of reports: the image beside its caption, each word shaded by its signed score."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from .report import MisalignmentReport


def _shade(score: float | None, scale: float) -> tuple[int, int, int]:
    if score is None:
        return (225, 225, 225)
    t = max(-1.0, min(1.0, score / scale)) if scale > 0 else 0.0
    if t < 0:  # red for evidence against the word
        return (255, int(255 * (1 + t * 0.75)), int(255 * (1 + t * 0.75)))
    return (int(255 * (1 - t * 0.6)), 255, int(255 * (1 - t * 0.6)))  # green for support


def render_report(
    image: Image.Image, report: MisalignmentReport, *, size: int = 256, width: int = 640
) -> Image.Image:
    """An RGB figure: the image (nearest-neighbour upscaled to `size`), the caption with each
    word's background shaded red (negative) or green (positive) in proportion to its score,
    misaligned words underlined, unscored words grey, and the scores underneath."""
    font = ImageFont.load_default(size=18)
    small = ImageFont.load_default(size=14)
    img = image.convert("RGB").resize((size, size), Image.NEAREST)
    canvas = Image.new("RGB", (size + width, size + 20), "white")
    canvas.paste(img, (10, 10))
    draw = ImageDraw.Draw(canvas)
    scored = [abs(w.score) for w in report.words if w.score is not None]
    scale = max(scored) if scored else 1.0
    x0, x, y = size + 25, size + 25, 20
    for w in report.words:
        tw = draw.textlength(w.word, font=font)
        if x + tw > size + width - 10:
            x, y = x0, y + 34
        draw.rectangle([x - 3, y - 2, x + tw + 3, y + 24], fill=_shade(w.score, scale))
        draw.text((x, y), w.word, fill="black", font=font)
        if w.misaligned:
            draw.line([x - 3, y + 26, x + tw + 3, y + 26], fill=(200, 0, 0), width=3)
        x += tw + 12
    y += 50
    lines = [
        f"CLIPScore {report.clip_score:.3f}   F-CLIPScore {report.f_clip_score:.5f}",
        "misaligned: " + (", ".join(report.misaligned_words) or "(none)"),
    ]
    if report.truncated:
        lines.append("caption longer than the context: grey words unscored")
    for line in lines:
        draw.text((x0, y), line, fill=(40, 40, 40), font=small)
        y += 22
    return canvas
