"""SD 1.x/2.x (`StableDiffusionPipeline`): one CLIP text encoder, a UNet, CFG in one batch."""

from __future__ import annotations

from .base import Capabilities, PipelineAdapter, TextSlot


def lora_scale(call_kw: dict | None, key: str = "cross_attention_kwargs"):
    """The LoRA scale the pipeline's call hands its `encode_prompt` (None when unset)."""
    return ((call_kw or {}).get(key) or {}).get("scale")


class SDAdapter(PipelineAdapter):
    family = "sd"
    title = "SD 1.x/2.x"
    pipeline_classes = ("StableDiffusionPipeline",)
    components = ("unet", "text_encoder", "tokenizer")
    denoiser_name = "unet"
    capabilities = Capabilities(weights=True, phrase_guidance=True, attend_and_excite=True)

    def slots(self, call_kw=None):
        tok = self.pipe.tokenizer
        return [TextSlot("clip", tok, tok.model_max_length)]

    def encode_plain(self, prompt, call_kw=None):
        call_kw = call_kw or {}
        pe, _ = self.pipe.encode_prompt(
            prompt,
            self.pipe._execution_device,
            1,
            False,
            lora_scale=lora_scale(call_kw),
            clip_skip=call_kw.get("clip_skip"),
        )
        return {"prompt_embeds": pe}
