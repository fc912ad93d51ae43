"""Sana (`SanaPipeline`): Gemma2 tokens with their attention mask. By default the pipeline puts
its `complex_human_instruction` before the prompt, tokenizes both to
`n_instruction + max_sequence_length - 2` positions and keeps the start token and the last
`max_sequence_length - 1`: every prompt position shifts, which the slot's `prefix` and `keep`
model exactly."""

from __future__ import annotations

from .base import TextSlot
from .pixart import PixArtAdapter
from .sd import lora_scale


class SanaAdapter(PixArtAdapter):
    """Encodes like PixArt (mask, `clean_caption`, `max_sequence_length`) plus its instruction
    prefix and LoRA scale."""

    family = "sana"
    title = "Sana"
    pipeline_classes = ("SanaPipeline",)
    default_length = 300

    def _instruction(self, call_kw):
        return self.call_default("complex_human_instruction", call_kw, None)

    def slots(self, call_kw=None):
        tok = self.pipe.tokenizer
        msl = self.call_default("max_sequence_length", call_kw, self.default_length)
        chi = self._instruction(call_kw)
        prefix, total = "", msl
        if chi:
            prefix = "\n".join(chi)
            total = len(tok.encode(prefix)) + msl - 2
        keep = (0, *range(total - msl + 1, total))
        return [TextSlot("gemma", tok, total, prefix=prefix, keep=keep, lowercase=True)]

    def encode_kwargs(self, call_kw):
        return {
            "complex_human_instruction": self._instruction(call_kw),
            "lora_scale": lora_scale(call_kw, "attention_kwargs"),
        }
