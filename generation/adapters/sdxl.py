"""SDXL (`StableDiffusionXLPipeline`): CLIP-L and CLIP-G joined along the feature axis; the
pooled CLIP-G embedding conditions the UNet too (left unchanged by word weights)."""

from __future__ import annotations

from .base import Capabilities, PipelineAdapter, TextSlot
from .sd import lora_scale


class SDXLAdapter(PipelineAdapter):
    family = "sdxl"
    title = "SDXL"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    components = ("unet", "text_encoder_2", "tokenizer_2")
    denoiser_name = "unet"
    capabilities = Capabilities(weights=True, phrase_guidance=True, attend_and_excite=False)

    def slots(self, call_kw=None):
        p = self.pipe
        out, start = [], 0
        for name, enc, tok in (
            ("clip_l", p.text_encoder, p.tokenizer),
            ("clip_g", p.text_encoder_2, p.tokenizer_2),
        ):
            if enc is None or tok is None:
                continue  # the refiner has CLIP-G only
            d = enc.config.hidden_size
            out.append(TextSlot(name, tok, tok.model_max_length, 0, (start, start + d)))
            start += d
        return out

    def encode_plain(self, prompt, call_kw=None):
        call_kw = call_kw or {}
        pe, _, pooled, _ = self.pipe.encode_prompt(
            prompt,
            device=self.pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            lora_scale=lora_scale(call_kw),
            clip_skip=call_kw.get("clip_skip"),
        )
        return {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
