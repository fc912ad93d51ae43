"""`clip4dm app`: a local web page (Gradio) to check an image against a caption, or to
generate with the loop and watch it fix the prompt round by round.

Models are chosen on the server's command line only; the page never opens a path a visitor
types. Uploads are size- and pixel-limited and decoded by our own loader, so a bad file gets a
one-line message in the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from feedback import InputError, MisalignmentDetector, load_image
from feedback.errors import Clip4dmError
from feedback.figures import draw_boxes, word_colours

from .config import RECOMMENDED_STRATEGY, LoopConfig
from .figures import CSS, prompt_cards
from .outputs import PromptHistory
from .strategies import STRATEGIES


@dataclass
class AppConfig:
    """Server-side settings of the app.

    max_upload_mb: largest accepted upload.
    max_pixels: largest accepted image (width x height), checked before any model runs.
    max_caption_chars: longest accepted caption or prompt.
    max_budget: largest image budget a visitor may ask for.
    """

    max_upload_mb: int = 10
    max_pixels: int = 4096 * 4096
    max_caption_chars: int = 1000
    max_budget: int = 8
    regions: bool = True
    """Check each object phrase on its own region (`feedback.regions`); the page then shows
    each flagged word's box on the image."""


def _shade(score: float | None, scale: float) -> str:
    if score is None or scale <= 0:
        return "transparent"
    a = min(1.0, abs(score) / scale)
    return f"rgba(220,40,40,{a:.2f})" if score < 0 else f"rgba(40,160,80,{a:.2f})"


def report_html(report) -> str:
    """The caption with every word shaded by its signed score and misaligned words marked."""
    # a relation word's score is a margin (cosine units), not an attribution: left out of
    # the shading scale so the attributions stay visible
    scores = [
        abs(w.score)
        for w in report.words
        if w.score is not None and getattr(w, "reason", "image") != "relation"
    ]
    scale = max(scores) if scores else 0.0
    parts = []
    colours = word_colours(report)
    for i, w in enumerate(report.words):
        text = html.escape(w.word)
        title = "unscored" if w.score is None else f"{w.score:+.3e}"
        style = f"background:{_shade(w.score, scale)}"
        inner = f"<span class='w' style='{style}' title='{title}'>{text}</span>"
        if w.misaligned and i in colours:  # underlined in the colour of its box
            inner = f"<u style='text-decoration-color:rgb{colours[i]}'>{inner}</u>"
        parts.append(f"<mark class='flag'>{inner}</mark>" if w.misaligned else inner)
    flagged = ", ".join(report.misaligned_words) or "none"
    return (
        f"<div class='words' style='font-size:20px'>{' '.join(parts)}</div>"
        f"<p>misaligned: <b class='misaligned'>{html.escape(flagged)}</b> · "
        f"CLIPScore {report.clip_score:.4f} · F-CLIPScore {report.f_clip_score:.6f}</p>"
    )


class App:
    """The app's logic, independent of Gradio (tested directly)."""

    def __init__(
        self,
        detector: MisalignmentDetector,
        pipe=None,
        config: AppConfig | None = None,
        *,
        verifier=None,
    ):
        self.detector = detector
        self.pipe = pipe
        #: the loop's verifier card (selection, stop and P(right) on the page), or None
        self.verifier = verifier
        self.config = config or AppConfig()
        # A diffusers pipeline is not thread-safe (its scheduler keeps per-call state): one
        # generation at a time, the next request waits in Gradio's queue. Checks only use the
        # detector (stateless per call), so they never wait for someone else's generation.
        self._pipe_lock = threading.Lock()

    def _check_caption(self, caption) -> str:
        if not isinstance(caption, str) or not caption.strip():
            raise InputError("caption is empty or whitespace-only")
        if len(caption) > self.config.max_caption_chars:
            raise InputError(
                f"caption is {len(caption)} characters; this app accepts up to "
                f"{self.config.max_caption_chars}"
            )
        return caption

    def check(self, image_path, caption) -> tuple[str, dict, str]:
        """(HTML, report dict, path of the JSON report) for an uploaded image file."""
        if image_path is None:
            raise InputError("no image: upload or paste one")
        caption = self._check_caption(caption)
        p = Path(image_path)
        if p.stat().st_size > self.config.max_upload_mb * 2**20:
            raise InputError(f"image file is over {self.config.max_upload_mb} MB")
        img = load_image(p)
        if img.width * img.height > self.config.max_pixels:
            raise InputError(
                f"image is {img.width}x{img.height}; this app accepts up to "
                f"{self.config.max_pixels} pixels"
            )
        if self.config.regions:
            report = self.detector.detect_regions([img], [caption])[0]
        else:
            report = self.detector(img, caption)
        d = report.to_dict()
        d["settings"] = {**self.detector.config.to_dict(), "regions": self.config.regions}
        out = Path(tempfile.mkdtemp(prefix="clip4dm-")) / "report.json"
        out.write_text(json.dumps(d, indent=2))
        page = report_html(report)
        if word_colours(report):  # each flagged word's box on the image, in its colour
            boxed = draw_boxes(img, report, max(1, 256 // max(img.width, img.height)))
            buf = io.BytesIO()
            boxed.save(buf, "PNG")
            uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
            page += f"<img class='boxes' src='{uri}' alt='flagged words and where'>"
        return page, d, str(out)

    def generate(
        self,
        prompt,
        strategy: str,
        budget: int,
        steps: int,
        seed: int,
        rounds: int = 4,
        per_round: int = 1,
    ):
        """Yield the HTML of the rounds made so far, after every round."""
        from .pipeline import FeedbackPipeline

        if self.pipe is None:
            raise InputError("this server was started without a pipeline")
        prompt = self._check_caption(prompt)
        if strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {tuple(STRATEGIES)}")
        budget = int(budget)
        if not 1 <= budget <= self.config.max_budget:
            raise InputError(f"budget must be between 1 and {self.config.max_budget}")
        try:
            cfg = LoopConfig(
                strategy=strategy,
                max_images=budget,
                max_rounds=int(rounds),
                samples_per_round=int(per_round),
                seed=int(seed),
            )
        except ValueError as e:
            raise InputError(str(e)) from None
        try:
            fb = FeedbackPipeline(self.pipe, self.detector, cfg, verifier=self.verifier)
        except ValueError as e:
            raise InputError(str(e)) from None
        oracle = _shapes_oracle(prompt)
        done = []
        # The loop runs in this (Gradio worker) thread and yields after every round; a
        # background thread running torch here crashed the interpreter at exit.
        with self._pipe_lock:
            try:
                for item in fb.stream(prompt, num_inference_steps=int(steps)):
                    if isinstance(item, PromptHistory):
                        yield _page(item, oracle, running=False)
                    else:
                        done.append(item.record)  # P(right) set by the loop, as is .best
                        partial = PromptHistory(item.prompt, list(done), item.best, "running")
                        yield _page(partial, oracle, running=True)
            except ValueError as e:
                raise InputError(str(e)) from None


def model_label(name: str) -> str:
    """What the page calls a model: its shipped or hub name, or only the folder's own name
    for a local folder (never a path on the server)."""
    import os

    for scheme in ("local-dir:", "hf-hub:"):
        if name.startswith(scheme):
            name = name[len(scheme) :] if scheme == "local-dir:" else name
    if os.sep in name or (os.altsep and os.altsep in name):
        p = Path(name)
        if p.is_absolute() or name.startswith((".", "~")) or p.exists():
            return p.name or name
    return name


def _page(h: PromptHistory, oracle, running: bool) -> str:
    cards, verdict = prompt_cards(h, oracle=oracle)
    status = (
        f"round {len(h.rounds)} done, working…"
        if running
        else f"done: {h.num_images} image(s), stopped: {h.stop_text}"
        + (f" · oracle: kept image {'right' if verdict == 'yes' else 'wrong'}" if verdict else "")
    )
    return f"<div class='status'>{html.escape(status)}</div>{cards}"


def _shapes_oracle(prompt: str):
    """The ShapesWorld oracle when `prompt` is in its grammar, else None."""
    from shapesworld.oracle import in_grammar, oracle_verdicts

    return oracle_verdicts if in_grammar(prompt) else None


def example_pairs(folder: Path, n: int = 3) -> list[list[str]]:
    """ShapesWorld scenes with a foil caption, written to `folder` (one click examples)."""
    from shapesworld.benchmark import load_shapes_foil

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, s in enumerate(load_shapes_foil(n=n)):
        if i >= n:
            break
        path = folder / f"example_{i}.png"
        s.image.resize((128, 128)).save(path)
        out.append([str(path), s.caption])
    return out


def build_app(app: App):
    """The Gradio Blocks for `app` (launch it with `launch(app, ...)`)."""
    import gradio as gr

    examples_dir = Path(tempfile.mkdtemp(prefix="clip4dm-examples-"))

    def do_check(image, caption):
        try:
            return app.check(image, caption)
        except (InputError, Clip4dmError) as e:
            raise gr.Error(str(e)) from None

    def do_generate(prompt, strategy, budget, steps, seed, rounds, per_round):
        try:
            yield from app.generate(prompt, strategy, budget, steps, seed, rounds, per_round)
        except (InputError, Clip4dmError) as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="clip4dm") as demo:
        gr.Markdown(
            "# clip4dm\nWhich words of the prompt did the image get wrong? "
            f"Detector: `{model_label(app.detector.backend.name)}`."
        )
        with gr.Tab("Check"):
            with gr.Row():
                image = gr.Image(type="filepath", label="image", sources=["upload", "clipboard"])
                with gr.Column():
                    caption = gr.Textbox(label="caption", elem_id="caption")
                    go = gr.Button("Check", variant="primary", elem_id="check")
            result = gr.HTML(elem_id="check-result")
            report = gr.JSON(label="report")
            download = gr.File(label="report.json")
            gr.Examples(example_pairs(examples_dir), [image, caption])
            go.click(do_check, [image, caption], [result, report, download])
        with gr.Tab("Generate and fix"):
            prompt = gr.Textbox(label="prompt", elem_id="prompt")
            with gr.Row():
                strategy = gr.Radio(list(STRATEGIES), value=RECOMMENDED_STRATEGY, label="strategy")
                budget = gr.Slider(1, app.config.max_budget, value=4, step=1, label="images")
                steps = gr.Slider(2, 50, value=20, step=1, label="steps")
                seed = gr.Number(value=0, precision=0, label="seed")
            with gr.Row():
                rounds_in = gr.Slider(1, 8, value=4, step=1, label="max rounds")
                per_round = gr.Slider(1, 4, value=1, step=1, label="images per round (N)")
            gen = gr.Button("Generate", variant="primary", elem_id="generate")
            rounds = gr.HTML(elem_id="rounds")
            gen.click(
                do_generate, [prompt, strategy, budget, steps, seed, rounds_in, per_round], [rounds]
            )
    demo.queue(default_concurrency_limit=2)
    return demo


def launch(app: App, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Start the page (localhost unless `host` says otherwise)."""
    demo = build_app(app)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        max_file_size=f"{app.config.max_upload_mb}mb",
        css=CSS + ".w{padding:1px 3px;border-radius:3px}",
        footer_links=[],
        quiet=True,
    )
    return demo
