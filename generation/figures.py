"""Pictures of a loop run: an HTML report (every round's images, the prompt with misaligned
words highlighted and their weights, each flagged word's box on its image in the word's
colour, an optional oracle verdict beside) and a PNG grid (boxes drawn the same way)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from feedback.figures import draw_boxes, word_colours

from .outputs import PromptHistory

#: oracle(image, prompt) -> (per detector word: True right / False wrong / None no verdict,
#: whether the whole image is right -- which can fail with every word right, e.g. an extra
#: object).
Oracle = Callable[[Image.Image, str], tuple[Sequence[bool | None], bool]]


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB PIL image."""
    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)


def _data_uri(img: Image.Image, scale: int) -> str:
    buf = io.BytesIO()
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:20px} table{border-collapse:collapse;margin-bottom:16px}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}
.prompt{margin:24px 0 8px;font-size:16px}
.rounds{display:flex;gap:14px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:220px}
.card.kept{border:3px solid #2a7}
.card img{image-rendering:pixelated;display:block;margin-bottom:6px}
.words{font-size:14px;line-height:1.8}
mark.flag{background:#f66;color:#fff;padding:1px 3px;border-radius:3px}
span.weight{font-size:11px;color:#555;vertical-align:super}
span.oracle-wrong{text-decoration:underline wavy #c00}
.meta{font-size:12px;color:#555}
"""


def _words_html(report, weights, verdicts) -> str:
    parts = []
    colours = word_colours(report)
    for i, w in enumerate(report.words):
        text = html.escape(w.word)
        if verdicts is not None and i < len(verdicts) and verdicts[i] is False:
            text = f'<span class="oracle-wrong" title="oracle: wrong">{text}</span>'
        if w.misaligned:
            score = "unscored" if w.score is None else f"{w.score:+.2e}"
            style, why = "", ""
            if i in colours:  # the word's box is drawn on the image in this colour
                style = f" style='background:rgb{colours[i]}'"
                why = f", {getattr(w, 'reason', '')}, box {tuple(round(v) for v in w.box)}"
            text = f'<mark class="flag"{style} title="detector score {score}{why}">{text}</mark>'
        if weights and i < len(weights) and abs(weights[i] - 1.0) > 1e-9:
            text += f'<span class="weight">×{weights[i]:.2f}</span>'
        parts.append(text)
    return " ".join(parts)


def prompt_cards(
    h: PromptHistory, *, oracle: Oracle | None = None, scale: int = 4
) -> tuple[str, str]:
    """HTML cards for every image the loop made for one prompt, and the oracle's verdict on the
    kept image ("yes", "no", or "" without an oracle)."""
    verdict_ok = ""
    cards = []
    for rec in h.rounds:
        for k, img in enumerate(rec.images):
            pil = to_pil(img)
            verdicts, all_right = oracle(pil, h.prompt) if oracle is not None else (None, None)
            if all_right is None:  # the oracle cannot read this prompt
                verdicts = None
            kept = (rec.round, k) == tuple(h.best)
            if kept and verdicts is not None:
                verdict_ok = "yes" if all_right else "no"
            r = rec.reports[k]
            oracle_line = ""
            if verdicts is not None:
                wrong = [w.word for w, v in zip(r.words, verdicts) if v is False]
                said = ", ".join(wrong) or ("all right" if all_right else "wrong object count")
                oracle_line = f"<div class='meta oracle'>oracle: {html.escape(said)}</div>"
            cards.append(
                f"<div class='card{' kept' if kept else ''}'>"
                f"<img src='{_data_uri(draw_boxes(pil, r, scale), 1)}' "
                f"alt='round {rec.round} image {k}'>"
                f"<div class='meta'>round {rec.round} · {html.escape(_fix_label(rec))} · "
                f"seed {rec.seeds[k]}"
                f"{' · kept' if kept else ''}</div>"
                f"<div class='words'>{_words_html(r, rec.weights, verdicts)}</div>"
                f"<div class='meta'>F-CLIPScore {r.f_clip_score:.5f} · "
                f"CLIPScore {r.clip_score:.3f}{_p_right(rec, k)}</div>{oracle_line}</div>"
            )
    return f"<div class='rounds'>{''.join(cards)}</div>", verdict_ok


def _fix_label(rec) -> str:
    """The round's fix, and the fix the card's gate replaced by a fresh sample, if any."""
    gated = rec.extra.get("gated") if isinstance(rec.extra, dict) else None
    if getattr(rec, "preview", False):
        # a few-step preview, or a candidate stopped early: it chose seeds, it is never kept
        per = rec.steps // max(len(rec.seeds), 1)
        return f"{rec.fix} (a {per}-step look, never kept)"
    if not gated:
        return rec.fix
    kind = rec.extra.get("kind")
    article = "an" if str(kind)[:1] in "aeiou" else "a"
    return f"{rec.fix} (not {gated}: no gain measured for {article} {kind} word)"


def _p_right(rec, k: int) -> str:
    """' · P(right) 0.83' when the loop ran with a verifier card."""
    p = rec.p_right[k] if k < len(rec.p_right) else None
    return f" · <b class='p-right'>P(right) {p:.2f}</b>" if p is not None else ""


def write_html(
    history: Sequence[PromptHistory],
    path: str | Path,
    *,
    oracle: Oracle | None = None,
    title: str = "clip4dm feedback loop",
    scale: int = 4,
) -> Path:
    """Write a self-contained HTML report (images inlined) of a loop run."""
    path = Path(path)
    rows, blocks = [], []
    for h in history:
        rep = h.best_report
        cards, verdict_ok = prompt_cards(h, oracle=oracle, scale=scale)
        r, k = h.best
        p = h.rounds[r].p_right[k] if k < len(h.rounds[r].p_right) else None
        rows.append(
            f"<tr><td>{html.escape(h.prompt)}</td><td>{h.num_images}</td>"
            f"<td>{h.num_steps} ({h.num_denoiser_evals})</td>"
            f"<td>{html.escape(', '.join(rep.misaligned_words) or '-')}</td>"
            f"<td>{'-' if p is None else f'{p:.2f}'}</td>"
            f"<td>{html.escape(h.stop_text)}</td><td>{verdict_ok or '-'}</td></tr>"
        )
        blocks.append(f"<div class='prompt'>{html.escape(h.prompt)}</div>{cards}")
    head = (
        "<tr><th>prompt</th><th>images</th>"
        "<th>denoiser steps (evaluations, CFG's doubled batch counted)</th>"
        "<th>still flagged (kept image)</th>"
        "<th>P(right) (kept image)</th>"
        "<th>stopped</th><th>oracle: kept image right</th></tr>"
    )
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        "<p class='meta'>Red: words the detector flags as misaligned (×w: the weight the "
        "loop gave them). Wavy underline: words the ShapesWorld oracle finds wrong. Green "
        f"frame: the image kept.</p><table>{head}{''.join(rows)}</table>"
        f"{''.join(blocks)}</body></html>"
    )
    path.write_text(doc, encoding="utf-8")
    return path


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrap_words(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def write_grid(
    history: Sequence[PromptHistory], path: str | Path, *, scale: int = 4, text_width: int = 260
) -> Path:
    """A PNG that stands alone: one row per prompt, its text on the left (the kept image's
    flagged words in red capitals, and why the loop stopped), then every image the loop made
    in order, each labelled with its round and seed; the kept one framed in green."""
    path = Path(path)
    tiles = [
        [
            (
                draw_boxes(to_pil(img), rec.reports[k], scale),
                (rec.round, k) == tuple(h.best),
                f"r{rec.round} seed {rec.seeds[k]}",
            )
            for rec in h.rounds
            for k, img in enumerate(rec.images)
        ]
        for h in history
    ]
    size = max((t[0][0].width for t in tiles if t), default=32 * scale)
    pad, label_h = 6, 16
    font, small = _font(13), _font(11)
    cols = max((len(t) for t in tiles), default=1)
    row_h = size + label_h + pad
    width = text_width + cols * (size + pad) + pad
    canvas = Image.new("RGB", (width, len(tiles) * row_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (h, row) in enumerate(zip(history, tiles)):
        y0 = pad + r * row_h
        flagged = {w.start for w in h.best_report.words if w.misaligned}
        words = []
        for w in h.best_report.words:
            words.append((w.word.upper() if w.start in flagged else w.word, w.start in flagged))
        # the prompt, flagged words marked; each word drawn in its colour
        x, y = pad, y0
        for text, bad in words:
            tw = draw.textlength(text + " ", font=font)
            if x + tw > text_width - pad and x > pad:
                x, y = pad, y + 16
            draw.text((x, y), text, fill=(200, 30, 30) if bad else (20, 20, 20), font=font)
            x += tw
        r_, k_ = h.best
        p = h.rounds[r_].p_right[k_] if k_ < len(h.rounds[r_].p_right) else None
        note = f"{h.num_images} images, {h.num_steps} steps; {h.stop_text}" + (
            f"; kept P(right) {p:.2f}" if p is not None else ""
        )
        for line in _wrap_words(draw, note, small, text_width - 2 * pad):
            y += 16
            draw.text((pad, y), line, fill=(110, 110, 110), font=small)
        for c, (img, kept, label) in enumerate(row):
            x = text_width + c * (size + pad)
            canvas.paste(img.resize((size, size), Image.NEAREST), (x, y0))
            draw.text((x, y0 + size + 2), label, fill=(90, 90, 90), font=small)
            if kept:
                draw.rectangle(
                    [x - 3, y0 - 3, x + size + 2, y0 + size + 2], outline=(34, 170, 119), width=3
                )
    canvas.save(path)
    return path
