"""Any other diffusers text-to-image pipeline whose call takes `prompt`, `generator` and
`output_type="pt"`: prompt strings only, so the selection strategies (best_of_n, resample)
work and every strategy that changes the conditioning is refused with the reason."""

from __future__ import annotations

import inspect

from .base import Capabilities, PipelineAdapter


class GenericAdapter(PipelineAdapter):
    family = "generic"
    title = "this pipeline (generic adapter)"
    denoiser_name = "unet"
    capabilities = Capabilities(
        weights=False, phrase_guidance=False, attend_and_excite=False, true_cfg=False
    )

    def __init__(self, pipe):
        super().__init__(pipe)
        self.title = f"{type(pipe).__name__} (generic adapter)"
        if not self.matches(pipe):
            raise ValueError(
                f"unsupported pipeline {type(pipe).__name__}: FeedbackPipeline needs a diffusers "
                "text-to-image pipeline whose call takes `prompt`, `generator` and "
                "`output_type` (load one with DiffusionPipeline.from_pretrained)"
            )

    @classmethod
    def matches(cls, pipe) -> bool:
        if not callable(pipe) or not hasattr(pipe, "components"):
            return False
        try:
            params = inspect.signature(pipe.__call__).parameters
        except (TypeError, ValueError):
            return False
        return all(p in params for p in ("prompt", "generator", "output_type"))

    @property
    def denoiser(self):
        for name in ("unet", "transformer", "prior"):
            mod = getattr(self.pipe, name, None)
            if mod is not None:
                return mod
        raise ValueError(f"{type(self.pipe).__name__} has no unet or transformer")

    def slots(self, call_kw=None):
        return []
