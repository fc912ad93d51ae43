"""`FeedbackPipeline`: a diffusers text-to-image pipeline with CLIP4DM feedback in the loop.

It wraps (never subclasses or copies) a `StableDiffusionPipeline` (SD 1.x/2.x) or a
`StableDiffusionXLPipeline`. Each round: generate (`output_type="pt"`, images stay tensors),
score every image against its prompt with the detector, keep the best so far, and if it still
has misaligned words and budget is left, apply the configured fix and generate again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext

import torch

from feedback import MisalignmentDetector
from feedback.detector import reports_from_output

from .attend_excite import attention_resolution, build_attend_and_excite, token_indices
from .config import LoopConfig
from .guidance import phrase_guidance
from .outputs import FeedbackPipelineOutput, PromptHistory, RoundEvent, RoundRecord
from .phrases import raise_phrase_weights, split_phrases, word_phrases
from .selection import best_in_rounds, best_index
from .weighting import apply_weights, raise_weights, to_a1111, to_compel, token_weights

SUPPORTED = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
OUTPUT_TYPES = ("pil", "pt", "np")


def _is_sdxl(pipe) -> bool:
    return type(pipe).__name__ == "StableDiffusionXLPipeline" or hasattr(pipe, "text_encoder_2")


class FeedbackPipeline:
    """Generate, score each image's words, fix what the image got wrong, regenerate.

    >>> pipe = StableDiffusionPipeline.from_pretrained(path)
    >>> fb = FeedbackPipeline(pipe, MisalignmentDetector.from_pretrained("shapes-tiny"))
    >>> out = fb("a red circle left of a blue square", num_inference_steps=20)
    >>> out.images[0], out.history[0].best_report.misaligned_words
    """

    def __init__(
        self,
        pipe,
        detector: MisalignmentDetector,
        config: LoopConfig | None = None,
    ):
        name = type(pipe).__name__
        if name not in SUPPORTED and not any(c.__name__ in SUPPORTED for c in type(pipe).__mro__):
            raise ValueError(
                f"unsupported pipeline {name}: FeedbackPipeline wraps "
                f"{' or '.join(SUPPORTED)} (load one with .from_pretrained or build it from "
                "your components)"
            )
        self.pipe = pipe
        self.detector = detector
        self.config = config or LoopConfig()
        self.sdxl = _is_sdxl(pipe)
        if self.config.strategy == "attend_and_excite" and self.sdxl:
            raise ValueError(
                "attend_and_excite needs diffusers' StableDiffusionAttendAndExcitePipeline, "
                "which exists for SD 1.x/2.x only; use strategy='reweight' with SDXL"
            )
        pdev, ddev = torch.device(pipe.device), torch.device(detector.backend.device)
        if pdev.type != ddev.type or (pdev.index or 0) != (ddev.index or 0):
            raise ValueError(
                f"the detector is on {ddev} but the pipeline is on {pdev}: images would cross "
                f"devices every round; load the detector with device='{pdev}' (or move the "
                "pipeline)"
            )
        self._ae = None

    # ------------------------------------------------------------------ tokenizers & encoders
    @property
    def tokenizers(self) -> list:
        toks = [self.pipe.tokenizer]
        if self.sdxl:
            toks.append(self.pipe.tokenizer_2)
        return [t for t in toks if t is not None]

    def _embed_dims(self) -> list[int]:
        encs = [self.pipe.text_encoder] + ([self.pipe.text_encoder_2] if self.sdxl else [])
        return [e.config.hidden_size for e in encs if e is not None]

    def encode(self, prompt: str, words=None, weights: Sequence[float] | None = None) -> dict:
        """Pipeline keyword arguments carrying `prompt`'s (weighted) embeddings."""
        dev = self.pipe.device
        if self.sdxl:
            pe, _, pooled, _ = self.pipe.encode_prompt(
                prompt, device=dev, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            kw = {"pooled_prompt_embeds": pooled}
        else:
            pe, _ = self.pipe.encode_prompt(prompt, dev, 1, False)
            kw = {}
        if weights is not None and words is not None:
            maps = [token_weights(prompt, words, weights, t) for t in self.tokenizers]
            pe = apply_weights(pe, maps, self._embed_dims())
        kw["prompt_embeds"] = pe
        return kw

    # ------------------------------------------------------------------ checks
    def check_inputs(self, prompt, negative_prompt, output_type) -> list[str]:
        if isinstance(prompt, str):
            prompts = [prompt]
        elif (
            isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt)
        ):
            prompts = list(prompt)
        else:
            raise ValueError(
                f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}"
            )
        for p in prompts:
            if not p.strip():
                raise ValueError("`prompt` holds an empty prompt; give each image a caption")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            if len(negative_prompt) != len(prompts):
                raise ValueError(
                    f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has "
                    f"{len(prompts)}: pass one negative prompt per prompt, or a single string"
                )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        for p in prompts:
            for tok in self.tokenizers:
                n = len(tok(p, add_special_tokens=False)["input_ids"])
                cap = tok.model_max_length - 2
                if n > cap:
                    warnings.warn(
                        f"prompt is {n} tokens but the pipeline's tokenizer reads {cap}: the "
                        f"words after token {cap} are not seen by the generator and are never "
                        f"re-weighted ({p[:60]!r}...)",
                        stacklevel=3,
                    )
                    break
        return prompts

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        prompt: str | list[str],
        *,
        num_images_per_prompt: int | None = None,
        generator: torch.Generator | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 4.0,
        negative_prompt: str | list[str] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_round_end: Callable[[str, RoundRecord], None] | None = None,
        **pipe_kwargs,
    ):
        """Run the loop for each prompt (see `LoopConfig`).

        num_images_per_prompt: overrides `config.samples_per_round` for this call.
        generator: a seeded `torch.Generator` draws the base seed (else `config.seed`); image
            k of a prompt is generated with its own generator seeded base + k, so every image is
            reproducible alone.
        callback_on_round_end(prompt, record): called after each round is scored.
        Other keyword arguments go to the pipeline call unchanged.
        """
        history = []
        for item in self.stream(
            prompt,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            callback_on_step_end=callback_on_step_end,
            output_type=output_type,
            **pipe_kwargs,
        ):
            if isinstance(item, PromptHistory):
                history.append(item)
            elif callback_on_round_end is not None:
                callback_on_round_end(item.prompt, item.record)
        kept = torch.cat([h.rounds[h.best[0]].images[h.best[1]][None] for h in history])
        images = self._convert(kept, output_type)
        if not return_dict:
            return (images, history)
        return FeedbackPipelineOutput(images=images, history=history)

    def stream(
        self,
        prompt: str | list[str],
        *,
        num_images_per_prompt: int | None = None,
        generator: torch.Generator | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 4.0,
        negative_prompt: str | list[str] | None = None,
        callback_on_step_end: Callable | None = None,
        output_type: str = "pt",
        **pipe_kwargs,
    ) -> Iterator[RoundEvent | PromptHistory]:
        """The loop as an iterator, in the caller's thread: a `RoundEvent` as soon as each round
        is scored, and each prompt's `PromptHistory` when its loop ends (same arguments as
        `__call__`; images in the records are tensors)."""
        prompts = self.check_inputs(prompt, negative_prompt, output_type)
        cfg = self.config
        per_round = num_images_per_prompt or cfg.samples_per_round
        if cfg.strategy == "phrase_guidance" and guidance_scale <= 1:
            raise ValueError(
                "strategy 'phrase_guidance' adds guidance terms, so it needs classifier-free "
                f"guidance: pass guidance_scale > 1 (got {guidance_scale})"
            )
        if generator is not None:
            base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        else:
            base = cfg.seed
        negs = (
            [negative_prompt] * len(prompts)
            if negative_prompt is None or isinstance(negative_prompt, str)
            else list(negative_prompt)
        )
        call_kw = dict(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            callback_on_step_end=callback_on_step_end,
            **pipe_kwargs,
        )
        for j, (p, neg) in enumerate(zip(prompts, negs)):
            yield from self._rounds(p, neg, base + 100_003 * j, per_round, call_kw)

    # ------------------------------------------------------------------ internals
    def _generate(
        self, prompt, neg, seeds, weights, words, fix, indices, call_kw, phrases=(), pweights=()
    ) -> torch.Tensor:
        dev = self.pipe.device
        gens = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
        if fix == "attend_and_excite" and indices:
            if self._ae is None:
                self._ae = build_attend_and_excite(self.pipe)
            saved = dict(self.pipe.unet.attn_processors)
            kw = {k: v for k, v in call_kw.items() if k != "callback_on_step_end"}
            try:
                out = self._ae(
                    prompt=prompt,
                    token_indices=indices,
                    negative_prompt=neg,
                    num_images_per_prompt=len(seeds),
                    generator=gens,
                    output_type="pt",
                    attn_res=attention_resolution(self.pipe.unet),
                    max_iter_to_alter=self.config.ae_max_iter_to_alter,
                    scale_factor=self.config.ae_scale_factor,
                    **kw,
                )
            finally:
                # A&E swaps in its own attention processors; give the UNet back as it was.
                self.pipe.unet.set_attn_processor(saved)
            return out.images
        emb = self.encode(prompt, words, weights)
        ph = (
            torch.cat([self.encode(p.text)["prompt_embeds"] for p in phrases])
            if any(pweights)
            else None
        )
        with phrase_guidance(self.pipe, ph, pweights) if ph is not None else nullcontext():
            out = self.pipe(
                negative_prompt=neg,
                num_images_per_prompt=len(seeds),
                generator=gens,
                output_type="pt",
                **emb,
                **call_kw,
            )
        return out.images

    def _rounds(self, prompt, neg, base, per_round, call_kw):
        cfg = self.config
        det = self.detector
        budget = cfg.max_images
        rounds: list[RoundRecord] = []
        words = None
        weights: list[float] | None = None
        best: tuple[int, int] | None = None
        used, next_seed, stopped = 0, base, "max_rounds"
        fix, indices = "plain", []
        phrases = split_phrases(prompt) if cfg.strategy == "phrase_guidance" else []
        pweights = [0.0] * len(phrases)
        word_phrase: list[int | None] = []
        for r in range(cfg.max_rounds if cfg.strategy != "best_of_n" else 1):
            n = budget - used if cfg.strategy == "best_of_n" else min(per_round, budget - used)
            if n <= 0:
                stopped = "max_images"
                break
            if r == 0 or cfg.reseed or best is None or cfg.strategy == "resample":
                seeds = list(range(next_seed, next_seed + n))
                next_seed += n
            else:
                s0 = rounds[best[0]].seeds[best[1]]
                seeds = [s0 + 7919 * k for k in range(n)]
            images = self._generate(
                prompt, neg, seeds, weights, words, fix, indices, call_kw, phrases, pweights
            )
            out = det.score(images, [prompt] * len(seeds), nan_policy="mask")
            reports = reports_from_output(out)
            if words is None:
                words = out.words[0]
                weights = [1.0] * len(words)
                word_phrase = word_phrases(words, phrases)
            rec = RoundRecord(
                r,
                fix,
                images.detach().float().cpu(),
                reports,
                seeds,
                list(weights),
                to_a1111(prompt, words, weights),
                to_compel(prompt, words, weights),
                list(indices),
                [p.text for p in phrases],
                list(pweights),
            )
            rounds.append(rec)
            used += n
            yield RoundEvent(prompt, rec)
            best = (
                best_in_rounds(rounds) if cfg.select_from_all_rounds else (r, best_index(reports))
            )
            chosen = rounds[best[0]].reports[best[1]]
            if cfg.stop_when_aligned and not chosen.misaligned_words:
                stopped = "aligned"
                break
            if cfg.strategy == "best_of_n":
                stopped = "max_images"
                break
            if used >= budget:
                stopped = "max_images"
                break
            # The fix targets the words the kept image still gets wrong.
            flags = [w.misaligned for w in chosen.words]
            scores = [w.score for w in chosen.words]
            if cfg.strategy == "resample":
                fix = "resample"
            elif cfg.strategy in ("reweight", "phrase_guidance"):
                fix, reweight = "reweight", flags
                if cfg.strategy == "phrase_guidance" and len(phrases) >= 2:
                    fix = "phrase_guidance"
                    pweights = raise_phrase_weights(
                        pweights,
                        word_phrase,
                        flags,
                        step=cfg.phrase_step,
                        max_weight=cfg.max_phrase_weight,
                    )
                    # Words between phrases (relations) have no phrase to guide: re-weight.
                    reweight = [f and k is None for f, k in zip(flags, word_phrase)]
                weights = raise_weights(
                    weights,
                    scores,
                    reweight,
                    threshold=det.config.threshold,
                    step=cfg.weight_step,
                    max_weight=cfg.max_weight,
                )
            else:
                fix = "attend_and_excite"
                indices = token_indices(prompt, words, flags, self.pipe.tokenizer)
                if not indices:
                    stopped = "no_fix"
                    break
        yield PromptHistory(prompt, rounds, best, stopped)

    def _convert(self, images: torch.Tensor, output_type: str):
        if output_type == "pt":
            return images
        arr = images.permute(0, 2, 3, 1).float().numpy()
        if output_type == "np":
            return arr
        return self.pipe.image_processor.numpy_to_pil(arr)
