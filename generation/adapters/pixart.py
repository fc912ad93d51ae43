"""PixArt-Σ/α (`PixArtSigmaPipeline`, `PixArtAlphaPipeline`): T5 tokens with their attention
mask; the prompt is lower-cased and stripped first (or cleaned, `clean_caption=True` with bs4
and ftfy installed: then positions follow the cleaned text only approximately)."""

from __future__ import annotations

from .base import Capabilities, PipelineAdapter, TextSlot


class PixArtAdapter(PipelineAdapter):
    family = "pixart"
    title = "PixArt-Σ"
    pipeline_classes = ("PixArtSigmaPipeline", "PixArtAlphaPipeline")
    components = ("transformer", "text_encoder", "tokenizer")
    denoiser_name = "transformer"
    capabilities = Capabilities(weights=True, phrase_guidance=False, attend_and_excite=False)
    default_length = 300

    def slots(self, call_kw=None):
        msl = self.call_default("max_sequence_length", call_kw, self.default_length)
        return [TextSlot("t5", self.pipe.tokenizer, msl, lowercase=True)]

    def encode_kwargs(self, call_kw) -> dict:
        """Family-specific `encode_prompt` arguments beyond the shared ones."""
        return {}

    def encode_plain(self, prompt, call_kw=None):
        pe, mask, _, _ = self.pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=self.pipe._execution_device,
            clean_caption=self.call_default("clean_caption", call_kw, False),
            max_sequence_length=self.call_default(
                "max_sequence_length", call_kw, self.default_length
            ),
            **self.encode_kwargs(call_kw),
        )
        return {"prompt_embeds": pe, "prompt_attention_mask": mask}
