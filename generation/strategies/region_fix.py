"""region_fix: regenerate only the wrong object's box (`feedback.regions`), keep the rest.

The kept image's worst flagged word that has a box (an attribute judged on its object's
region, a missing object, or a placement: the subject's stated region) names where to act;
diffusers' inpainting pipeline for the family (`AutoPipelineForInpainting.from_pipe`, over the
same modules, nothing loaded) regenerates that box with the full prompt, the rest of the image
kept. Families without an inpainting pipeline (PixArt-Σ, Sana, a generic pipeline) are refused
with the reason before any image is made. With nothing flagged in a box the round is a fresh
sample (recorded as such).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import RoundPlan, Strategy, StrategyOptions, register


def inpainting_pipeline(pipe):
    """The family's inpainting pipeline over `pipe`'s own modules, or ValueError why not."""
    from diffusers import AutoPipelineForInpainting

    try:
        inpaint = AutoPipelineForInpainting.from_pipe(pipe)
        inpaint.set_progress_bar_config(disable=True)
        return inpaint
    except Exception as e:  # diffusers raises ValueError/KeyError/... for unmapped families
        raise ValueError(
            f"strategy 'region_fix' needs an inpainting pipeline for {type(pipe).__name__} "
            f"(diffusers' AutoPipelineForInpainting has none: {str(e).splitlines()[0][:160]}); "
            "use reweight or resample"
        ) from None


def box_mask(box, size: tuple[int, int], n: int, device) -> torch.Tensor:
    """(n, 1, H, W) float mask, 1 inside `box` (pixels, x0 y0 x1 y1, rounded outwards)."""
    h, w = size
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(w, int(-(-box[2] // 1))), min(h, int(-(-box[3] // 1)))
    m = torch.zeros(n, 1, h, w, device=device)
    m[:, :, y0:y1, x0:x1] = 1.0
    return m


def target_word(report):
    """The flagged word with a box to regenerate (the most negative), or None."""
    flagged = [
        w
        for w in report.words
        if w.misaligned and w.score is not None and getattr(w, "box", None) is not None
    ]
    return min(flagged, key=lambda w: w.score) if flagged else None


@dataclass
class RegionFix(StrategyOptions):
    """region_fix has no settings of its own (its boxes come from `LoopConfig.region_config`)."""


@register
class RegionFixStrategy(Strategy):
    name = "region_fix"
    options_class = RegionFix

    def __init__(self, config):
        super().__init__(config)
        self._inpaint = None

    def check(self, adapter, call_kw: dict) -> None:
        super().check(adapter, call_kw)
        if self._inpaint is None:
            self._inpaint = inpainting_pipeline(adapter.pipe)

    def next(self, state):
        rep = state.chosen
        word = target_word(rep)
        if word is None:
            return RoundPlan("resample", extra={"region_fix": "nothing flagged has a box"})
        r, i = state.best
        kept = state.rounds[r].images[i]
        box = tuple(float(v) for v in word.box)

        def generate(st, generators):
            if self._inpaint is None:
                self._inpaint = inpainting_pipeline(st.adapter.pipe)
            dev = getattr(st.adapter.pipe, "device", "cpu")
            n = len(generators)
            image = kept[None].to(dev).expand(n, -1, -1, -1)
            mask = box_mask(box, tuple(kept.shape[-2:]), n, dev)
            kw = {k: v for k, v in st.call_kw.items() if k != "callback_on_step_end"}
            kw.update(height=kept.shape[-2], width=kept.shape[-1], output_type="pt")
            neg = st.negative_prompt
            out = self._inpaint(
                prompt=[st.prompt] * n,  # one prompt per kept-image copy
                image=image,
                mask_image=mask,
                negative_prompt=[neg] * n if isinstance(neg, str) else neg,
                num_images_per_prompt=1,
                generator=generators,
                **kw,
            )
            images = out.images
            if not torch.is_tensor(images):
                images = torch.stack([torch.as_tensor(x) for x in images])
            return images.float()

        return RoundPlan(
            "region_fix",
            reuse_seeds=not self.config.reseed,
            generate=generate,
            extra={
                "box": list(box),
                "word": word.word,
                "reason": word.reason,
                "phrases": [rep.phrases[word.phrase].text] if word.phrase is not None else [],
            },
        )
