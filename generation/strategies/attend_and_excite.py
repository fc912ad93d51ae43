"""attend_and_excite: hand the flagged words' tokens to diffusers' Attend-and-Excite pipeline
(SD 1.x/2.x UNets only), built over the wrapped pipeline's own modules."""

from dataclasses import dataclass

from feedback.fields import number_in, positive_int

from ..attend_excite import attention_resolution, build_attend_and_excite, token_indices
from .base import RoundPlan, Strategy, StrategyOptions, register


@dataclass
class AttendAndExcite(StrategyOptions):
    """attend_and_excite's settings: Attend-and-Excite's own knobs (diffusers'
    `StableDiffusionAttendAndExcitePipeline`: steps it alters the latents for, and the step
    size of its attention loss)."""

    max_iter_to_alter: int = 25
    scale_factor: float = 20.0

    def __post_init__(self):
        positive_int(self, "max_iter_to_alter")
        number_in(self, "scale_factor", 0, None, open_lo=True)


@register
class AttendAndExciteStrategy(Strategy):
    name = "attend_and_excite"
    requires = ("attend_and_excite",)
    options_class = AttendAndExcite

    def __init__(self, config):
        super().__init__(config)
        self._ae = None

    def next(self, state):
        pipe = state.adapter.pipe
        flags = [w.misaligned for w in state.chosen.words]
        indices = token_indices(state.prompt, state.words, flags, pipe.tokenizer)
        if not indices:
            return None  # nothing flagged maps onto a token A&E can excite

        def generate(st, generators):
            if self._ae is None:
                self._ae = build_attend_and_excite(pipe)
            saved = dict(pipe.unet.attn_processors)
            kw = {k: v for k, v in st.call_kw.items() if k != "callback_on_step_end"}
            try:
                out = self._ae(
                    prompt=st.prompt,
                    token_indices=indices,
                    negative_prompt=st.negative_prompt,
                    num_images_per_prompt=len(generators),
                    generator=generators,
                    output_type="pt",
                    attn_res=attention_resolution(pipe.unet),
                    max_iter_to_alter=self.options.max_iter_to_alter,
                    scale_factor=self.options.scale_factor,
                    **kw,
                )
            finally:
                # A&E swaps in its own attention processors; give the UNet back as it was.
                pipe.unet.set_attn_processor(saved)
            return out.images

        return RoundPlan(
            "attend_and_excite",
            reuse_seeds=not self.config.reseed,
            generate=generate,
            extra={"token_indices": list(indices)},
        )
