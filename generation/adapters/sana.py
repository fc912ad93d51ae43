"""Sana (`SanaPipeline`): Gemma2 tokens with their attention mask. By default the pipeline puts
its `complex_human_instruction` before the prompt, tokenizes both to
`n_instruction + max_sequence_length - 2` positions and keeps the start token and the last
`max_sequence_length - 1`: every prompt position shifts, which the slot's `prefix` and `keep`
model exactly."""

from __future__ import annotations

from .base import Capabilities, PipelineAdapter, TextSlot
from .sd import lora_scale


class SanaAdapter(PipelineAdapter):
    family = "sana"
    title = "Sana"
    pipeline_classes = ("SanaPipeline",)
    components = ("transformer", "text_encoder", "tokenizer")
    denoiser_name = "transformer"
    capabilities = Capabilities(weights=True, phrase_guidance=False, attend_and_excite=False)

    def _instruction(self, call_kw):
        return self.call_default("complex_human_instruction", call_kw, None)

    def slots(self, call_kw=None):
        tok = self.pipe.tokenizer
        msl = self.call_default("max_sequence_length", call_kw, 300)
        chi = self._instruction(call_kw)
        prefix, total = "", msl
        if chi:
            prefix = "\n".join(chi)
            total = len(tok.encode(prefix)) + msl - 2
        keep = (0, *range(total - msl + 1, total))
        return [TextSlot("gemma", tok, total, prefix=prefix, keep=keep, lowercase=True)]

    def encode_plain(self, prompt, call_kw=None):
        pe, mask, _, _ = self.pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=self.pipe._execution_device,
            clean_caption=self.call_default("clean_caption", call_kw, False),
            max_sequence_length=self.call_default("max_sequence_length", call_kw, 300),
            complex_human_instruction=self._instruction(call_kw),
            lora_scale=lora_scale(call_kw, "attention_kwargs"),
        )
        return {"prompt_embeds": pe, "prompt_attention_mask": mask}
