"""`MisalignmentDetector`: which words of a caption does an image contradict?"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
from tqdm.auto import tqdm

from .attribution import eot_cam, relevance
from .backends import Backend, attributed_text_forward, cosine
from .config import DetectorConfig
from .errors import Clip4dmError, InputError
from .formulas import (
    check_finite,
    clip_score,
    f_clip_score,
    misaligned_mask,
    sum_negative_attribution,
)
from .images import ImageLike, load_image
from .pixels import check_image_tensor
from .registry import load_backend, recommended_settings
from .report import MisalignmentReport, WordScore
from .words import (
    TokenLayout,
    Word,
    join_template,
    layout_tokens,
    shorten,
    split_words,
    word_pooling,
)

NAN_POLICIES = ("raise", "mask")


@dataclass
class DetectorOutput:
    """Batched results of `MisalignmentDetector.score` (tensors on the model's device).

    B pairs, T token positions (SOT = 0, the batch cut after its last EOT), W words (the
    batch's longest caption). Padding entries are 0 and masked out.

    cosine, clip_score, f_clip_score, sum_negative_attribution: (B,) float32.
    token_scores: (B, T) float32 R[eot, j] (None for the occlusion method);
    token_mask: (B, T) bool, True on the caption's own tokens (not SOT, template, EOT).
    word_scores: (B, W) float32 signed word scores; word_mask: (B, W) bool, True where the
        word exists and is scored (not cut by the context).
    misaligned: (B, W) bool, the words selected by the config's mode.
    valid: (B,) bool, False where nan_policy="mask" dropped a non-finite sample (its scores
        are 0 and its masks False).
    words: per pair, its `Word`s (text and [start, end) span in the caption).
    token_slices: per pair and word, the [start, end) token positions it owns, or None.
    """

    captions: list[str]
    cosine: torch.Tensor
    clip_score: torch.Tensor
    f_clip_score: torch.Tensor
    sum_negative_attribution: torch.Tensor
    token_scores: torch.Tensor | None
    token_mask: torch.Tensor
    word_scores: torch.Tensor
    word_mask: torch.Tensor
    misaligned: torch.Tensor
    valid: torch.Tensor
    words: list[list[Word]]
    token_slices: list[list[tuple[int, int] | None]]
    truncated: list[bool]

    def to_dict(self) -> dict:
        """JSON-ready: tensors as nested lists."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.tolist()
            elif f.name == "words":
                v = [[asdict(w) for w in ws] for ws in v]
            out[f.name] = v
        return out


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
        self._layouts: dict[str, TokenLayout] = {}
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
        config: DetectorConfig | str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        **overrides,
    ) -> MisalignmentDetector:
        """Load a CLIP by name (see `feedback.registry`) and build a detector.

        config: a `DetectorConfig` or the path of one saved with `DetectorConfig.save`.
        overrides: any `DetectorConfig` field (layers=, threshold=, template=, mode=,
            method=, batch_size=, ...); None means "not given".
        Without a config, fields not overridden take the shipped model card's recommendation
        if it has one, else the paper's defaults (K=3, eps=-5e-5, "A photo depicts ",
        threshold mode).
        """
        names = {f.name for f in fields(DetectorConfig)}
        unknown = set(overrides) - names
        if unknown:
            raise InputError(
                f"unknown detector option(s): {', '.join(sorted(unknown))} "
                f"(DetectorConfig fields: {', '.join(sorted(names))})"
            )
        if isinstance(config, (str, os.PathLike)):
            config = DetectorConfig.load(config)
        base = config.to_dict() if config is not None else recommended_settings(model)
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = {**base, **given}
        return cls(
            load_backend(model, pretrained, device=device, dtype=dtype), DetectorConfig(**settings)
        )

    # ---------------------------------------------------------------------------------------
    def __call__(self, image: ImageLike, caption: str) -> MisalignmentReport:
        """Report for one (image, caption) pair."""
        return self.detect([image], [caption])[0]

    def detect(
        self,
        images: Sequence[ImageLike] | torch.Tensor,
        captions: Sequence[str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[MisalignmentReport]:
        """Reports for many pairs, `batch_size` pairs per forward and backward.

        images: paths or PIL images (any mode), or a (B, 3, H, W) float tensor in [0, 1], one
            per caption; a single image may be paired with many captions by repeating it.
        """
        captions = self._check_pairs(images, captions)
        bs = batch_size or self.config.batch_size
        out: list[MisalignmentReport] = []
        for i in tqdm(
            range(0, len(captions), bs), disable=not progress, desc="clip4dm", unit="batch"
        ):
            res = self.score(images[i : i + bs], captions[i : i + bs])
            out.extend(reports_from_output(res))
        return out

    def score(
        self,
        images: Sequence[ImageLike] | torch.Tensor,
        captions: Sequence[str],
        *,
        nan_policy: str = "raise",
    ) -> DetectorOutput:
        """Score one batch and return tensors (see `DetectorOutput`).

        images: a (B, 3, H, W) float tensor in [0, 1] on any device (preprocessed on that
            device to the backend's transform, no PIL round trip), or paths / PIL images.
        nan_policy: "raise" (NonFiniteScoreError) or "mask" (the sample's `valid` is False and
            the others are kept), for trainers that must not lose a step to one bad sample.
        Works under an outer `torch.no_grad()` / `torch.inference_mode()`.
        """
        if nan_policy not in NAN_POLICIES:
            raise InputError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        captions = self._check_pairs(images, captions)
        prepared = [self._prepare(c) for c in captions]
        # Attribution needs autograd even when the caller switched it off.
        with torch.inference_mode(False), torch.enable_grad():
            if isinstance(images, torch.Tensor):
                check_image_tensor(images, allow_nan=nan_policy == "mask")
                x = images.clone() if images.is_inference() else images
                img = self.backend.encode_image(self.backend.preprocess_tensor(x.detach()))
            else:
                img = self._encode_images(self._load_images(images))
            return self._score_batch(img, prepared, nan_policy)

    @torch.no_grad()
    def cosine(self, images: Sequence[ImageLike] | torch.Tensor, captions: Sequence[str]):
        """(n_images, n_captions) float32 cosine of every image with every templated caption,
        without attribution (what CLIPScore is made of: `2.5 * max(cos, 0)`); captions past
        the context are truncated as in `score`. For contrasts: an image's cosine with its
        prompt against minimally edited prompts (`feedback.verifier`)."""
        captions = list(captions)
        if not captions or any(not isinstance(c, str) or not c.strip() for c in captions):
            raise InputError("captions must be non-empty strings")
        if isinstance(images, torch.Tensor):
            check_image_tensor(images)
            img = self.backend.encode_image(self.backend.preprocess_tensor(images.detach()))
        else:
            img = self._encode_images(self._load_images(images))
        texts = [join_template(self.config.template, c) for c in captions]
        txt = self.backend.encode_text(self.backend.tokenize(texts))
        img = torch.nn.functional.normalize(img.float(), dim=-1)
        txt = torch.nn.functional.normalize(txt.float(), dim=-1)
        return img @ txt.T

    @torch.no_grad()
    def text_embeddings(self, captions: Sequence[str]) -> torch.Tensor:
        """(n, D) float32 normalised embeddings of the templated captions (no attribution)."""
        texts = [join_template(self.config.template, c) for c in captions]
        txt = self.backend.encode_text(self.backend.tokenize(texts))
        return torch.nn.functional.normalize(txt.float(), dim=-1)

    def detect_regions(
        self,
        images: Sequence[ImageLike] | torch.Tensor,
        captions: Sequence[str],
        *,
        boxes: Sequence[Sequence[tuple[float, float, float, float]] | None] | None = None,
        config=None,
        progress: bool = False,
    ) -> list:
        """Which word is wrong, and where: one `feedback.regions.RegionReport` per pair.

        Each object phrase of the caption is scored on its own region (the rest of the image
        filled with its background colour), each attribute word by CLIP4DM's attribution of
        its phrase there, each placement ("to the left of", "on the top") by the regions'
        geometry against the swapped arrangement; a caption of one phrase with nothing placed
        gets the whole-image result unchanged. See `feedback.regions`.

        images: paths or PIL images, or a (B, 3, H, W) float tensor in [0, 1]; boxes: per
            image, your own proposals in pixels (x0, y0, x1, y1), or None; config: a
            `feedback.regions.RegionConfig` (proposals, isolation, dead zone...).
        """
        captions = self._check_pairs(images, captions)
        for c in captions:
            self._prepare(c)  # clear errors for empty / non-string captions, up front
        if isinstance(images, torch.Tensor):
            check_image_tensor(images)
            tensors = [images[i : i + 1] for i in range(images.shape[0])]
        else:
            from torchvision.transforms.functional import pil_to_tensor

            tensors = [(pil_to_tensor(im).float() / 255)[None] for im in self._load_images(images)]
        # batches of images of one size (a batch is one tensor)
        out: list = [None] * len(captions)
        by_size: dict = {}
        for i, t in enumerate(tensors):
            by_size.setdefault(tuple(t.shape[-2:]), []).append(i)
        bs = self.config.batch_size
        chunks = [ids[k : k + bs] for ids in by_size.values() for k in range(0, len(ids), bs)]
        with tqdm(total=len(captions), disable=not progress, desc="clip4dm regions") as bar:
            for ids in chunks:
                x = torch.cat([tensors[i] for i in ids])
                bx = None if boxes is None else [boxes[i] for i in ids]
                reps = self.score_regions(x, [captions[i] for i in ids], boxes=bx, config=config)
                for i, r in zip(ids, reps):
                    out[i] = r
                bar.update(len(ids))
        return out

    def score_regions(
        self,
        images: torch.Tensor,
        captions: Sequence[str],
        *,
        boxes=None,
        config=None,
        whole: Sequence[MisalignmentReport] | None = None,
    ) -> list:
        """The tensor form of `detect_regions` for loops: (B, 3, H, W) images in [0, 1] on the
        model's device, one batch; `whole`: the whole-image reports of the same pairs when the
        caller already has them (not recomputed)."""
        from .regions import score_regions

        captions = self._check_pairs(images, captions)
        check_image_tensor(images)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="caption is .* tokens with the template")
            return score_regions(self, images, captions, config=config, boxes=boxes, whole=whole)

    # ---------------------------------------------------------------------------------------
    def _check_pairs(self, images, captions) -> list[str]:
        if isinstance(captions, str):
            raise InputError(
                "captions must be a list of strings; use detector(image, caption) for a single pair"
            )
        n_img = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
        if n_img != len(captions):
            raise InputError(f"got {n_img} images but {len(captions)} captions")
        if not captions:
            raise InputError("no captions given")
        return list(captions)

    @staticmethod
    def _load_images(images) -> list:
        loaded: dict = {}
        out = []
        for im in images:
            key = str(im) if isinstance(im, (str, os.PathLike)) else id(im)
            if key not in loaded:
                loaded[key] = load_image(im)
            out.append(loaded[key])
        return out

    def unscored_words(self, caption: str) -> list[str]:
        """The words of `caption` past this detector's text window (scored None), without
        warning: a caller that reports the cut itself (the generation loop) asks here."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layout = self._prepare(caption).layout
        return [w.text for w, s in zip(layout.words, layout.slices) if s is None]

    def _prepare(self, caption: str) -> _Prepared:
        if not isinstance(caption, str):
            raise InputError(f"caption must be a string, got {type(caption).__name__}")
        if not caption.strip():
            raise InputError("caption is empty or whitespace-only")
        text = join_template(self.config.template, caption)
        layout = self._layouts.get(text)
        if layout is None:
            # Token spans cost a tokenizer pass and an alignment; loops score the same
            # prompt many times, so keep a bounded cache keyed by the templated text.
            layout = layout_tokens(
                split_words(caption),
                self.backend.token_spans(text),
                len(text) - len(caption),
                self.backend.context_length,
            )
            if len(self._layouts) >= 4096:
                self._layouts.clear()
            self._layouts[text] = layout
        if layout.truncated:
            cut = [w.text for w, s in zip(layout.words, layout.slices) if s is None]
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

    def _score_batch(
        self, img: torch.Tensor, prepared: list[_Prepared], nan_policy: str
    ) -> DetectorOutput:
        ids, eot = self._tokenize(prepared)
        layouts = [p.layout for p in prepared]
        token_scores = None
        if self.config.method == "occlusion":
            from .occlusion import occlusion_scores

            cos, per_word = occlusion_scores(self.backend, img, ids, eot, layouts)
            cos = cos.detach().float()
            seq = int(max(min(lay.n_tokens, lay.capacity) for lay in layouts) + 2)
            _, wmask = word_pooling(layouts, seq, cos.device)
            ws = torch.zeros(wmask.shape, device=cos.device)
            for b, scores in enumerate(per_word):
                for i, sc in enumerate(scores):
                    if sc is not None:
                        ws[b, i] = sc
        else:
            txt, attns = attributed_text_forward(self.backend, ids, eot, self.config.layers)
            s = cosine(img, txt)
            grads = torch.autograd.grad(s.sum(), attns)
            r = relevance(
                [
                    eot_cam(a.detach(), g, eot, relu=self.config.ablation_relu)
                    for a, g in zip(attns, grads)
                ]
            )
            cos, token_scores = s.detach().float(), r.float()
            pool, wmask = word_pooling(layouts, r.shape[1], r.device)
            ws = torch.bmm(pool, token_scores[:, :, None])[:, :, 0]
        return self._assemble(prepared, cos, token_scores, ws, wmask, nan_policy)

    def _assemble(self, prepared, cos, token_scores, ws, wmask, nan_policy) -> DetectorOutput:
        dev = cos.device
        bsz = len(prepared)
        seq = (
            token_scores.shape[1]
            if token_scores is not None
            else int(max(min(p.layout.n_tokens, p.layout.capacity) for p in prepared) + 2)
        )
        tmask = torch.zeros(bsz, seq, dtype=torch.bool)
        punct = torch.zeros(wmask.shape, dtype=torch.bool)
        for b, p in enumerate(prepared):
            for i, w in enumerate(p.layout.words):
                punct[b, i] = w.is_punctuation
            for sl in p.layout.slices:
                if sl is not None:
                    tmask[b, sl[0] : sl[1]] = True
        tmask, punct = tmask.to(dev), punct.to(dev)
        finite = torch.isfinite(cos) & torch.where(wmask, ws, 0.0).isfinite().all(dim=1)
        if not bool(finite.all()):
            if nan_policy == "raise":
                b = int((~finite).nonzero()[0])
                check_finite("cosine similarity", float(cos[b]))
                check_finite("a word score", float(ws[b][wmask[b]].sum()))
        valid = finite
        wmask = wmask & valid[:, None]
        ws = torch.where(wmask, ws, 0.0)
        mis = misaligned_mask(
            ws, wmask & ~punct, mode=self.config.mode, threshold=self.config.threshold
        )
        cos_v = torch.where(valid, cos, 0.0)
        cs = 2.5 * cos_v.clamp(min=0)
        neg = (ws * mis).sum(dim=1)
        if token_scores is not None:
            token_scores = torch.where(valid[:, None], token_scores, 0.0)
        return DetectorOutput(
            captions=[p.caption for p in prepared],
            cosine=cos_v,
            clip_score=cs,
            f_clip_score=neg * (1 - cs / 2.5),
            sum_negative_attribution=neg,
            token_scores=token_scores,
            token_mask=tmask & valid[:, None],
            word_scores=ws,
            word_mask=wmask,
            misaligned=mis,
            valid=valid,
            words=[list(p.layout.words) for p in prepared],
            token_slices=[list(p.layout.slices) for p in prepared],
            truncated=[p.layout.truncated for p in prepared],
        )


def reports_from_output(out: DetectorOutput) -> list[MisalignmentReport]:
    """One `MisalignmentReport` per pair of a `DetectorOutput` (Python floats, JSON-ready).

    The scalar scores are recomputed in float64 from the word scores, exactly as the report
    formulas state them (CLIPScore 2.5 max(s, 0); F-CLIPScore = sum of misaligned scores x
    (1 - CLIPScore / 2.5)).
    """
    reports = []
    cos = out.cosine.tolist()
    ws, wm, mis = out.word_scores.tolist(), out.word_mask.tolist(), out.misaligned.tolist()
    for b, caption in enumerate(out.captions):
        scores = [ws[b][i] if wm[b][i] else None for i in range(len(out.words[b]))]
        chosen = [i for i in range(len(out.words[b])) if mis[b][i]]
        neg = sum_negative_attribution(scores, chosen)
        cs = clip_score(cos[b])
        words = [
            WordScore(w.text, w.start, w.end, sc, i in chosen)
            for i, (w, sc) in enumerate(zip(out.words[b], scores))
        ]
        reports.append(
            MisalignmentReport(
                caption, words, cos[b], cs, neg, f_clip_score(neg, cs), out.truncated[b]
            )
        )
    return reports
