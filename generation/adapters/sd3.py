"""SD3/3.5 (`StableDiffusion3Pipeline`): CLIP-L and CLIP-G joined along the features (padded to
T5's width), then T5's tokens appended along the *sequence* axis (position 77 on)."""

from __future__ import annotations

from .base import Capabilities, PipelineAdapter, TextSlot
from .sd import lora_scale


class SD3Adapter(PipelineAdapter):
    family = "sd3"
    title = "SD3/3.5"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    components = ("transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    denoiser_name = "transformer"
    capabilities = Capabilities(weights=True, phrase_guidance=False, attend_and_excite=False)

    def slots(self, call_kw=None):
        p = self.pipe
        clip_len = p.tokenizer_max_length
        d1 = p.text_encoder.config.hidden_size
        d2 = p.text_encoder_2.config.hidden_size
        out = [
            TextSlot("clip_l", p.tokenizer, clip_len, 0, (0, d1)),
            TextSlot("clip_g", p.tokenizer_2, clip_len, 0, (d1, d1 + d2)),
        ]
        tok3 = getattr(p, "tokenizer_3", None)
        if tok3 is not None:
            msl = self.call_default("max_sequence_length", call_kw, 256)
            # Without text_encoder_3 the pipeline puts zeros there: nothing to weight.
            out.append(
                TextSlot(
                    "t5",
                    tok3,
                    msl,
                    clip_len,
                    None,
                    weighted=getattr(p, "text_encoder_3", None) is not None,
                )
            )
        return out

    def encode_plain(self, prompt, call_kw=None):
        call_kw = call_kw or {}
        pe, _, pooled, _ = self.pipe.encode_prompt(
            prompt,
            None,
            None,
            device=self.pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=call_kw.get("clip_skip"),
            max_sequence_length=self.call_default("max_sequence_length", call_kw, 256),
            lora_scale=lora_scale(call_kw, "joint_attention_kwargs"),
        )
        return {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
