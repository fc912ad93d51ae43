"""`PipelineAdapter`: what the feedback loop needs to know about one diffusers pipeline family.

The loop never touches a pipeline's internals directly. An adapter says:

- its text slots (`TextSlot`): each tokenizer, the input length its encoder reads (77 for CLIP,
  `max_sequence_length` for T5/Gemma) and where that encoder's tokens sit in the
  `prompt_embeds` the pipeline accepts (SDXL joins two CLIP encoders along the feature axis,
  SD3 joins CLIP and T5 along the sequence axis, FLUX's sequence is T5 only);
- `encode(prompt, words, weights)`: the pipeline's own `encode_prompt`, then each encoder's
  per-token output multiplied by the weights of the words its tokens belong to (positions
  through the detector's character spans, `feedback.align_words`). Pooled embeddings are left as
  the encoder made them; weight 1 everywhere gives the plain call's embeddings bit for bit;
- the denoiser (`unet` or `transformer`) and `wrap_denoiser` to wrap its forward for one call;
- its capabilities, and for each one a reason when it is missing, so a strategy can refuse
  before any image is made.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from feedback import Word, WordTokens, align_words


@dataclass(frozen=True)
class TextSlot:
    """One text encoder's input, as the pipeline builds it.

    name: "clip_l", "clip_g", "t5", "gemma" ... (what reports and warnings call it).
    tokenizer: the pipeline's tokenizer for this encoder.
    max_length: input positions the encoder reads (specials included).
    seq_offset: where this encoder's positions start on `prompt_embeds`' sequence axis.
    features: (start, stop) of this encoder's block on the feature axis; None = all of it.
    prefix: text the pipeline prepends to the prompt (Sana's complex human instruction).
    keep: input positions the pipeline keeps from the encoder output (Sana), else None.
    lowercase: the pipeline lower-cases and strips the prompt first (PixArt, Sana).
    weighted: False when the encoder is absent (SD3 without T5: zeros stand in).
    """

    name: str
    tokenizer: Any
    max_length: int
    seq_offset: int = 0
    features: tuple[int, int] | None = None
    prefix: str = ""
    keep: tuple[int, ...] | None = None
    lowercase: bool = False
    weighted: bool = True

    @property
    def window(self) -> int:
        """Content tokens this encoder reads (its input length less its own special tokens
        and any prefix)."""
        from feedback.alignment import _num_specials

        n_prefix = len(self.tokenizer(self.prefix, add_special_tokens=False)["input_ids"])
        inner = self.max_length - _num_specials(self.tokenizer) - n_prefix
        return inner if self.keep is None else min(inner, len(self.keep) - 1)

    def align(self, prompt: str, words: Sequence[Word] | None = None) -> WordTokens:
        """Where each word sits in this encoder's (kept) input."""
        words = list(words) if words is not None else None
        text, shifted = prompt, words
        if self.lowercase:
            # The pipeline reads prompt.lower().strip(); spans follow when lower() keeps the
            # length (it does for every Latin, CJK and Cyrillic text; a few letters such as
            # "İ" grow and then positions past them are approximate).
            lead = len(prompt) - len(prompt.lstrip())
            low = prompt.lower().strip()
            if len(prompt.lower()) == len(prompt):
                text = low
                if words is not None:
                    shifted = [
                        dataclasses.replace(w, start=w.start - lead, end=w.end - lead)
                        for w in words
                    ]
        al = align_words(
            text,
            self.tokenizer,
            words=shifted,
            max_length=self.max_length,
            prefix=self.prefix,
            keep=self.keep,
        )
        if words is not None:
            al.words, al.prompt = words, prompt
        return al


@dataclass(frozen=True)
class Capabilities:
    """What a family supports; a missing one comes with its reason (see `PipelineAdapter`).

    weights: per-word prompt weights through `prompt_embeds` (reweight).
    phrase_guidance: extra guidance terms in the denoiser's classifier-free-guidance batch.
    attend_and_excite: diffusers' Attend-and-Excite pipeline over the same modules.
    true_cfg: the pipeline runs classifier-free guidance with a negative prompt.
    """

    weights: bool = True
    phrase_guidance: bool = False
    attend_and_excite: bool = False
    true_cfg: bool = True


@dataclass
class AdapterInfo:
    """What `FeedbackPipeline` reports about the adapter it picked (`.to_dict()` for JSON)."""

    family: str
    pipeline_class: str
    denoiser: str
    capabilities: dict = field(default_factory=dict)
    windows: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PipelineAdapter:
    """Base class; one subclass per family (see the module docstring)."""

    #: Short family name used by `adapter=` and the README table.
    family: ClassVar[str] = ""
    #: Human name for messages ("SD 1.x/2.x", "FLUX.1", ...).
    title: ClassVar[str] = ""
    #: diffusers class names this adapter handles (matched over the pipeline's MRO).
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    #: Components the pipeline must hold for this adapter (checked, never guessed from one).
    components: ClassVar[tuple[str, ...]] = ()
    denoiser_name: ClassVar[str] = "unet"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, pipe):
        self.pipe = pipe
        missing = [c for c in self.components if getattr(pipe, c, None) is None]
        if missing:
            raise ValueError(
                f"{type(pipe).__name__} lacks {', '.join(missing)}: the {self.title} adapter "
                "needs them (pass adapter='generic' for selection strategies only)"
            )

    # ------------------------------------------------------------------ matching
    @classmethod
    def matches(cls, pipe) -> bool:
        names = {c.__name__ for c in type(pipe).__mro__}
        return bool(names & set(cls.pipeline_classes)) and all(
            hasattr(pipe, c) for c in cls.components
        )

    # ------------------------------------------------------------------ call defaults
    def call_default(self, name: str, call_kw: dict | None = None, fallback=None):
        """`name` as the pipeline call will see it: the caller's value, else the pipeline's
        own default from its `__call__` signature."""
        if call_kw and name in call_kw:
            return call_kw[name]
        p = inspect.signature(self.pipe.__call__).parameters.get(name)
        if p is None or p.default is inspect.Parameter.empty:
            return fallback
        return p.default

    def accepts(self, name: str) -> bool:
        params = inspect.signature(self.pipe.__call__).parameters
        return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    # ------------------------------------------------------------------ text
    def slots(self, call_kw: dict | None = None) -> list[TextSlot]:
        """The text encoders' inputs in `prompt_embeds` order."""
        raise NotImplementedError

    def encode_plain(self, prompt: str, call_kw: dict | None = None) -> dict:
        """Call keyword arguments holding the pipeline's own embeddings of `prompt` (batch 1),
        exactly as its call would compute them; `prompt_embeds` among them."""
        raise NotImplementedError

    def alignments(
        self, prompt: str, words: Sequence[Word] | None = None, call_kw: dict | None = None
    ) -> dict[str, WordTokens]:
        """Per text slot, where each word sits (and whether that encoder's window cut it)."""
        return {s.name: s.align(prompt, words) for s in self.slots(call_kw)}

    def encode(
        self,
        prompt: str,
        words: Sequence[Word] | None = None,
        weights: Sequence[float] | None = None,
        call_kw: dict | None = None,
    ) -> dict:
        """Call keyword arguments with `prompt`'s embeddings, each encoder's per-token output
        multiplied by the weights of the words at its positions (1 where no word is weighted;
        a token shared by two words takes the weight further from 1). Weight 1 everywhere
        returns the plain embeddings themselves."""
        if not self.capabilities.weights:
            raise ValueError(self.missing("weights"))
        # The pipeline's call runs under no_grad; so must its encoders here, or some kernels
        # (T5's attention among them) take a different path and round differently.
        with torch.no_grad():
            kw = self.encode_plain(prompt, call_kw)
        if weights is None or words is None or all(abs(w - 1.0) < 1e-12 for w in weights):
            return kw
        from ..weighting import position_weights

        pe = kw["prompt_embeds"].clone()
        for slot in self.slots(call_kw):
            if not slot.weighted:
                continue
            w = position_weights(slot.align(prompt, words), weights)
            a = slot.seq_offset
            n = max(min(len(w), pe.shape[1] - a), 0)
            feat = slice(*slot.features) if slot.features else slice(None)
            pe[:, a : a + n, feat] *= w[:n].to(pe)[None, :, None]
        kw["prompt_embeds"] = pe
        return kw

    def call_inputs(
        self,
        prompt: str,
        words: Sequence[Word] | None,
        weights: Sequence[float] | None,
        call_kw: dict | None = None,
    ) -> dict:
        """What a round passes the pipeline for `prompt`: the prompt string itself when no
        word is weighted (bit for bit the user's own `pipe(prompt, ...)`), else `encode`'s
        weighted embeddings."""
        if weights is None or all(abs(w - 1.0) < 1e-12 for w in weights):
            return {"prompt": prompt}
        return self.encode(prompt, words, weights, call_kw)

    def token_rewards(self, info, call_kw: dict | None = None) -> dict:
        """`info`'s word rewards (a `feedback.RewardInfo` from `FeedbackReward`) spread onto
        each text encoder's input positions: {slot name: `feedback.TokenRewards`} (B, L) with
        L that encoder's (kept) input length. Never assumes a CLIP tokenizer."""
        if not self.capabilities.weights:
            raise ValueError(self.missing("weights"))
        from feedback import token_rewards

        out = {}
        for s in self.slots(call_kw):
            out[s.name] = token_rewards(
                info.output,
                info.word_rewards,
                s.tokenizer,
                max_length=s.max_length,
                prefix=s.prefix,
                keep=s.keep,
                aligner=s.align,
            )
        return out

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        inputs: dict,
        *,
        generators: list[torch.Generator] | torch.Generator,
        negative_prompt: str | None = None,
        call_kw: dict | None = None,
        n: int | None = None,
    ) -> torch.Tensor:
        """(n, 3, H, W) float images in [0, 1], one per generator (or `n` from one generator,
        as diffusers draws them). `inputs` is `{"prompt": text}` or what `encode` returned."""
        kw = dict(call_kw or {})
        if negative_prompt is not None:
            kw["negative_prompt"] = negative_prompt
        if isinstance(generators, torch.Generator):
            if n is None:
                raise ValueError("one generator for the round: say how many images (n)")
        else:
            n = len(generators)
        out = self.pipe(
            **inputs,
            num_images_per_prompt=n,
            generator=generators,
            output_type="pt",
            **kw,
        )
        return as_image_tensor(out.images if hasattr(out, "images") else out[0])

    # ------------------------------------------------------------------ inside one call
    def decode_latents(self, latents: torch.Tensor, call_kw: dict | None = None) -> torch.Tensor:
        """(n, 3, H, W) float images in [0, 1] from the denoiser's latents (an x0 estimate
        mid-run), decoded as the pipeline's own call decodes its final latents."""
        vae = self.pipe.vae
        z = self.unpack_latents(latents, call_kw).to(vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            z = z + shift
        with torch.no_grad():
            img = vae.decode(z, return_dict=False)[0]
        return as_image_tensor(self.pipe.image_processor.postprocess(img, output_type="pt"))

    def unpack_latents(self, latents: torch.Tensor, call_kw: dict | None = None) -> torch.Tensor:
        """The latents in the VAE's (n, C, h, w) layout (FLUX packs them into patches)."""
        return latents

    def early_stop_missing(self) -> str | None:
        """None when a call can be read mid-run and stopped early (`callback_on_step_end`, the
        pipeline's `interrupt`, an x0 estimate from its scheduler, a VAE), else why not."""
        from ..clean_estimate import clean_rule

        if not self.accepts_exactly("callback_on_step_end"):
            return f"{type(self.pipe).__name__}'s call takes no callback_on_step_end"
        if not hasattr(type(self.pipe), "interrupt"):
            return f"{type(self.pipe).__name__} cannot be interrupted mid-run"
        sched = getattr(self.pipe, "scheduler", None)
        if sched is None or clean_rule(sched) is None:
            return (
                f"its scheduler ({type(sched).__name__}) gives no estimate of the clean image "
                "mid-run"
            )
        if getattr(self.pipe, "vae", None) is None:
            return f"{type(self.pipe).__name__} has no VAE to decode an estimate mid-run"
        return None

    def cfg_passes(self, call_kw: dict | None = None, negative_prompt=None) -> int:
        """Denoiser evaluations per image per step: 2 where the family runs classifier-free
        guidance (a doubled batch, or two calls), else 1."""
        g = self.call_default("guidance_scale", call_kw, None)
        if g is None:
            return 1
        unet = getattr(self.pipe, "unet", None)
        # SD with a guidance-embedding UNet (LCM) runs no CFG batch
        if unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None:
            return 1
        return 2 if g > 1 else 1

    def accepts_exactly(self, name: str) -> bool:
        """The call's signature names `name` (a `**kwargs` catch-all does not count)."""
        return name in inspect.signature(self.pipe.__call__).parameters

    # ------------------------------------------------------------------ denoiser
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @contextmanager
    def wrap_denoiser(self, make_forward: Callable[[Callable], Callable]):
        """Within the block the denoiser's forward is `make_forward(original_forward)`; the
        instance attribute is removed afterwards, which restores the class's forward."""
        mod = self.denoiser
        mod.forward = make_forward(mod.forward)
        try:
            yield
        finally:
            del mod.forward

    # ------------------------------------------------------------------ capabilities
    def missing(self, capability: str, call_kw: dict | None = None) -> str | None:
        """None when `capability` is usable with these call arguments, else why not."""
        if capability == "weights" and not self.capabilities.weights:
            return (
                f"{self.title} takes prompt strings only here: per-word weights need an adapter "
                "that knows its prompt_embeds (use best_of_n or resample)"
            )
        if capability == "phrase_guidance":
            if not self.capabilities.phrase_guidance:
                return (
                    f"phrase guidance adds terms to a UNet's classifier-free-guidance batch; "
                    f"{self.title}'s {self.denoiser_name} is not supported (use reweight or "
                    "resample)"
                )
            g = self.call_default("guidance_scale", call_kw, 1.0)
            if g is None or g <= 1:
                return (
                    "strategy 'phrase_guidance' adds guidance terms, so it needs "
                    f"classifier-free guidance: pass guidance_scale > 1 (got {g})"
                )
        if capability == "attend_and_excite" and not self.capabilities.attend_and_excite:
            return (
                "Attend-and-Excite exists for SD 1.x/2.x UNets only (diffusers' "
                f"StableDiffusionAttendAndExcitePipeline); {self.title} cannot use it: use "
                "strategy='reweight'"
            )
        return None

    def info(self, call_kw: dict | None = None) -> AdapterInfo:
        windows = {}
        if self.capabilities.weights:
            windows = {s.name: s.window for s in self.slots(call_kw)}
        return AdapterInfo(
            self.family,
            type(self.pipe).__name__,
            self.denoiser_name,
            dataclasses.asdict(self.capabilities),
            windows,
        )


def as_image_tensor(images) -> torch.Tensor:
    """A pipeline's `output_type="pt"` images as one (n, 3, H, W) float tensor in [0, 1]
    (some pipelines return a list of (3, H, W) tensors, or an (n, H, W, 3) array)."""
    if isinstance(images, (list, tuple)):
        images = torch.stack([torch.as_tensor(i) for i in images])
    elif not torch.is_tensor(images):
        images = torch.as_tensor(images)
        if images.ndim == 4 and images.shape[-1] in (1, 3):
            images = images.permute(0, 3, 1, 2)
    if images.ndim == 3:
        images = images[None]
    return images.float()
