"""`MisalignmentDetector`: which words of a caption does an image contradict?"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .attribution import eot_cam, relevance
from .backends import Backend, attributed_text_forward, cosine
from .errors import Clip4dmError, InputError
from .images import ImageLike, load_image
from .registry import load_backend, recommended_settings
from .report import MisalignmentReport, WordScore
from .scores import (
    MODES,
    check_finite,
    clip_score,
    f_clip_score,
    select_misaligned,
    sum_negative_attribution,
)
from .words import TokenLayout, join_template, layout_tokens, shorten, split_words, word_scores

METHODS = ("gradient", "occlusion")
#: The paper's caption prefix.
DEFAULT_TEMPLATE = "A photo depicts "


@dataclass
class DetectorConfig:
    """How words are scored and selected.

    layers: number of last text layers whose signed CAMs are averaged (K; paper: 3).
    threshold: eps; in threshold mode words scoring below it are misaligned (paper: -5e-5).
    template: prefix put before every caption (paper: "A photo depicts "); its words are
        never reported.
    mode: "threshold" (every word below eps) or "most-negative" (the single lowest word).
    method: "gradient" (CLIP4DM) or "occlusion" (leave-one-word-out drop in cosine; costs one
        extra text forward per word, no backward).
    batch_size: pairs per forward/backward in `detect`.
    ablation_relu: clamp G*A at 0 (Chefer et al.). Not CLIP4DM; for comparisons only.
    """

    layers: int = 3
    threshold: float = -5e-5
    template: str = DEFAULT_TEMPLATE
    mode: str = "threshold"
    method: str = "gradient"
    batch_size: int = 32
    ablation_relu: bool = False

    def __post_init__(self):
        if not isinstance(self.layers, int) or self.layers < 1:
            raise InputError(f"layers must be a positive integer, got {self.layers!r}")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if not isinstance(self.threshold, (int, float)) or self.threshold != self.threshold:
            raise InputError(f"threshold must be a number, got {self.threshold!r}")
        if self.threshold > 0:
            raise InputError(
                f"threshold must be <= 0, got {self.threshold}: a positive eps would flag words "
                "the image supports (positive scores)"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Prepared:
    caption: str
    text: str
    layout: TokenLayout


class MisalignmentDetector:
    """Signed per-word attribution from a CLIP (CLIP4DM), plus CLIPScore and F-CLIPScore.

    >>> det = MisalignmentDetector.from_pretrained("shapes-tiny")
    >>> report = det("image.png", "a small red circle")
    >>> report.misaligned_words, report.f_clip_score
    """

    def __init__(self, backend: Backend, config: DetectorConfig | None = None):
        self.backend = backend
        self.config = config or DetectorConfig()
        if self.config.layers > backend.num_text_layers:
            raise InputError(
                f"layers={self.config.layers} but {backend.name} has only "
                f"{backend.num_text_layers} text layers"
            )

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        pretrained: str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        layers: int | None = None,
        threshold: float | None = None,
        template: str | None = None,
        mode: str | None = None,
        method: str | None = None,
        batch_size: int | None = None,
    ) -> MisalignmentDetector:
        """Load a CLIP by name (see `feedback.registry`) and build a detector.

        Options left as None take the shipped model card's recommendation if it has one, else
        the paper's defaults (K=3, eps=-5e-5, "A photo depicts ", threshold mode).
        """
        given = {
            "layers": layers,
            "threshold": threshold,
            "template": template,
            "mode": mode,
            "method": method,
            "batch_size": batch_size,
        }
        settings = {
            **recommended_settings(model),
            **{k: v for k, v in given.items() if v is not None},
        }
        config = DetectorConfig(**settings)
        return cls(load_backend(model, pretrained, device=device, dtype=dtype), config)

    # ---------------------------------------------------------------------------------------
    def __call__(self, image: ImageLike, caption: str) -> MisalignmentReport:
        """Report for one (image, caption) pair."""
        return self.detect([image], [caption])[0]

    def detect(
        self,
        images: Sequence[ImageLike],
        captions: Sequence[str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[MisalignmentReport]:
        """Reports for many pairs, `batch_size` pairs per forward and backward.

        images: paths or PIL images (any mode), one per caption; a single image may be paired
            with many captions by repeating it.
        """
        if isinstance(captions, str):
            raise InputError(
                "captions must be a list of strings; use detector(image, caption) for a single pair"
            )
        if len(images) != len(captions):
            raise InputError(f"got {len(images)} images but {len(captions)} captions")
        prepared = [self._prepare(c) for c in captions]
        bs = batch_size or self.config.batch_size
        out: list[MisalignmentReport] = []
        for i in tqdm(
            range(0, len(prepared), bs), disable=not progress, desc="clip4dm", unit="batch"
        ):
            loaded: dict = {}
            imgs = []
            for im in images[i : i + bs]:
                key = str(im) if isinstance(im, (str, os.PathLike)) else id(im)
                if key not in loaded:
                    loaded[key] = load_image(im)
                imgs.append(loaded[key])
            out.extend(self._run_batch(imgs, prepared[i : i + bs]))
        return out

    # ---------------------------------------------------------------------------------------
    def _prepare(self, caption: str) -> _Prepared:
        if not isinstance(caption, str):
            raise InputError(f"caption must be a string, got {type(caption).__name__}")
        if not caption.strip():
            raise InputError("caption is empty or whitespace-only")
        text = join_template(self.config.template, caption)
        offset = len(text) - len(caption)
        layout = layout_tokens(
            split_words(caption),
            self.backend.token_spans(text),
            offset,
            self.backend.context_length,
        )
        if layout.truncated:
            cut = [
                w.text
                for w, s in zip(layout.words, layout.slices)
                if s is None and w.end + offset > 0
            ]
            msg = (
                f"caption is {layout.n_tokens} tokens with the template but "
                f"{self.backend.name} reads {layout.capacity}: {len(cut)} word(s) from "
                f"{shorten(cut[0]) if cut else '?'!r} on are unscored (score None)"
            )
            warnings.warn(msg, stacklevel=4)
        return _Prepared(caption, text, layout)

    def _encode_images(self, images) -> torch.Tensor:
        # Encode each distinct image once (a prompt scored against many captions is common).
        keys, uniq = [], {}
        for im in images:
            k = id(im)
            keys.append(uniq.setdefault(k, (len(uniq), im))[0])
        pix = self.backend.preprocess([im for _, im in uniq.values()])
        emb = self.backend.encode_image(pix)
        return emb[torch.tensor(keys, device=emb.device)]

    def _tokenize(self, prepared: list[_Prepared]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.backend.tokenize([p.text for p in prepared])
        eot = self.backend.eot_positions(ids)
        for p, e in zip(prepared, eot.tolist()):
            expected = min(p.layout.n_tokens, p.layout.capacity) + 1
            if e != expected:
                raise Clip4dmError(
                    f"tokenizer placed EOT at {e} but per-word tokenization predicts {expected} "
                    f"for {p.text!r}; word spans cannot be trusted for this caption"
                )
        n = int(eot.max()) + 1  # causal mask: nothing after the last EOT matters
        return ids[:, :n], eot

    def _run_batch(self, images, prepared: list[_Prepared]) -> list[MisalignmentReport]:
        img = self._encode_images(images)
        ids, eot = self._tokenize(prepared)
        if self.config.method == "occlusion":
            from .occlusion import occlusion_scores

            cos, per_word = occlusion_scores(
                self.backend, img, ids, eot, [p.layout for p in prepared]
            )
            return [self._report(p, float(c), s) for p, c, s in zip(prepared, cos, per_word)]
        with torch.inference_mode(False), torch.enable_grad():
            txt, attns = attributed_text_forward(self.backend, ids, eot, self.config.layers)
            s = cosine(img, txt)
            grads = torch.autograd.grad(s.sum(), attns)
        r = relevance(
            [
                eot_cam(a.detach(), g, eot, relu=self.config.ablation_relu)
                for a, g in zip(attns, grads)
            ]
        )
        return [
            self._report(p, float(c), word_scores(r[b], p.layout))
            for b, (p, c) in enumerate(zip(prepared, s.detach()))
        ]

    def _report(self, p: _Prepared, cos: float, scores: list[float | None]) -> MisalignmentReport:
        check_finite("cosine similarity", cos)
        for sc in scores:
            if sc is not None:
                check_finite("a word score", sc)
        eligible = [not w.is_punctuation for w in p.layout.words]
        chosen = select_misaligned(
            scores, mode=self.config.mode, threshold=self.config.threshold, eligible=eligible
        )
        neg = sum_negative_attribution(scores, chosen)
        cs = clip_score(cos)
        words = [
            WordScore(w.text, w.start, w.end, sc, i in chosen)
            for i, (w, sc) in enumerate(zip(p.layout.words, scores))
        ]
        return MisalignmentReport(
            p.caption, words, cos, cs, neg, f_clip_score(neg, cs), p.layout.truncated
        )
