"""FLUX.1 (`FluxPipeline`): the pooled CLIP embedding conditions the transformer globally and
T5's tokens are the whole text sequence. FLUX.1-dev is guidance-distilled: `guidance_scale` is
an input of the transformer, not classifier-free guidance; true CFG runs only with
`true_cfg_scale > 1` and a negative prompt."""

from __future__ import annotations

from .base import Capabilities, PipelineAdapter, TextSlot
from .sd import lora_scale


class FluxAdapter(PipelineAdapter):
    family = "flux"
    title = "FLUX.1"
    pipeline_classes = ("FluxPipeline",)
    components = ("transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    denoiser_name = "transformer"
    capabilities = Capabilities(
        weights=True, phrase_guidance=False, attend_and_excite=False, true_cfg=False
    )

    def slots(self, call_kw=None):
        msl = self.call_default("max_sequence_length", call_kw, 512)
        return [TextSlot("t5", self.pipe.tokenizer_2, msl)]

    def encode_plain(self, prompt, call_kw=None):
        call_kw = call_kw or {}
        pe, pooled, _ = self.pipe.encode_prompt(
            prompt,
            None,
            device=self.pipe._execution_device,
            num_images_per_prompt=1,
            max_sequence_length=self.call_default("max_sequence_length", call_kw, 512),
            lora_scale=lora_scale(call_kw, "joint_attention_kwargs"),
        )
        return {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}

    def unpack_latents(self, latents, call_kw=None):
        if latents.ndim == 4:
            return latents
        size = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        h = self.call_default("height", call_kw, None) or size
        w = self.call_default("width", call_kw, None) or size
        return self.pipe._unpack_latents(latents, h, w, self.pipe.vae_scale_factor)

    def cfg_passes(self, call_kw=None, negative_prompt=None):
        # guidance_scale is an input of the distilled transformer; true CFG is a second call
        t = self.call_default("true_cfg_scale", call_kw, 1.0) or 1.0
        return 2 if t > 1 and negative_prompt is not None else 1

    def missing(self, capability, call_kw=None):
        if capability == "phrase_guidance":
            # One message whatever true_cfg_scale is: with it > 1 FLUX runs true CFG as two
            # separate transformer calls, which the phrase terms (a UNet CFG batch) don't wrap.
            return (
                "FLUX.1-dev is guidance-distilled: phrase guidance needs true classifier-free "
                "guidance (`true_cfg_scale > 1` with a negative_prompt), and even then FLUX.1 "
                "runs it as separate transformer calls, which FeedbackPipeline's phrase terms "
                "(a UNet's CFG batch) do not wrap: use reweight or resample"
            )
        return super().missing(capability, call_kw)
