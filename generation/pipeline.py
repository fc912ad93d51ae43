"""`FeedbackPipeline`: a diffusers text-to-image pipeline with CLIP4DM feedback in the loop.

It wraps (never subclasses or copies) a pipeline of any family through an adapter
(`generation.adapters`: SD 1.x/2.x, SDXL, SD3/3.5, FLUX.1, PixArt-Σ, Sana, or any pipeline taking
`prompt`/`generator`/`output_type` for the selection strategies). Each round: generate
(`output_type="pt"`, images stay tensors), score every image against its prompt with the
detector, keep the best so far, and if it still has misaligned words and budget is left, ask
the strategy (`generation.strategies`) for the next round. Budget, seeds, scoring, selection
and the stop rule live here, once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch

from feedback import MisalignmentDetector, split_words
from feedback.detector import reports_from_output
from feedback.regions import parse_structure

from .adapters import PipelineAdapter, adapter_for
from .cards import CALL_DEFAULT_KEYS, PipelineCard
from .config import LoopConfig
from .outputs import FeedbackPipelineOutput, PromptHistory, RoundEvent, RoundRecord
from .prompt_syntax import ParsedPrompt, parse_prompt
from .strategies import LoopState, RoundPlan, get_strategy
from .verifier import (
    auto_verifier,
    find_card,
    gate,
    load_verifier,
    rank,
    satisfied,
    say_if_gated,
    say_no_verifier_once,
)
from .weighting import to_a1111, to_compel

OUTPUT_TYPES = ("pil", "pt", "np")


class FeedbackPipeline:
    """Generate, score each image's words, fix what the image got wrong, regenerate.

    >>> pipe = DiffusionPipeline.from_pretrained(path)          # any supported family
    >>> fb = FeedbackPipeline(pipe)  # the detector: the card's beside the pipeline, else
    >>> # feedback.DEFAULT_MODEL; or pass one: MisalignmentDetector.from_pretrained(name)
    >>> out = fb("a red circle left of a blue square", num_inference_steps=20)
    >>> out.images[0], out.history[0].best_report.misaligned_words

    detector: a `MisalignmentDetector`, a model name or folder, or None: the detector named by
        the card beside the pipeline's weights (`generation.cards`), else
        `feedback.DEFAULT_MODEL`, at the card's eps for it where it has one.
    adapter: a family name ("sd", "sdxl", "sd3", "flux", "pixart", "sana", "generic"), an
        adapter class or instance; default: picked from the pipeline's class and components.
    verifier: a `feedback.Verifier` card (or its path) fitted on this generator's labelled
        images: the loop keeps the image the card ranks first and stops early only when its
        P(right) reaches the card's stop level (`generation.verifier`). "auto" (default): the
        card beside the pipeline's weights (`<folder>/verifier.json`) when it was fitted for
        this detector, at the card's eps. None: selection by the region-aware score for
        prompts of two or more objects, else by F-CLIPScore, and stop when nothing is flagged
        (said once).
    """

    def __init__(
        self,
        pipe,
        detector: MisalignmentDetector | str | None = None,
        config: LoopConfig | None = None,
        *,
        adapter: str | type[PipelineAdapter] | PipelineAdapter | None = None,
        verifier="auto",
    ):
        self.adapter = adapter_for(pipe, adapter)
        # the card beside the pipeline's weights: its sampling settings apply where a call
        # gives none, its detector and eps where none is given (`generation.cards`)
        self.card = PipelineCard.find(pipe)
        if detector is None or isinstance(detector, (str, Path)):
            detector = self._default_detector(pipe, detector)
        if isinstance(verifier, str) and verifier == "auto":
            found = find_card(pipe)
            verifier, detector = auto_verifier(pipe, detector)
            if verifier is not None:
                verifier = found  # the card's path, recorded with every result
        #: where the verifier card came from (recorded in each history's settings)
        self.verifier_source = None if verifier is None else str(verifier)
        if self.verifier_source is not None and not isinstance(verifier, (str, Path)):
            self.verifier_source = "in memory"
        self.verifier = load_verifier(verifier)
        if self.verifier is None:
            say_no_verifier_once()
        elif self.verifier.threshold is not None and (
            abs(self.verifier.threshold - detector.config.threshold) > 1e-12
        ):
            raise ValueError(
                f"the verifier card was fitted at eps {self.verifier.threshold:.6g} but the "
                f"detector uses {detector.config.threshold:.6g}: load the detector with "
                f"threshold={self.verifier.threshold!r}, or refit the card at this eps"
            )
        self.pipe = pipe
        self.detector = detector
        self.config = config or LoopConfig()
        self.strategy = get_strategy(self.config)
        say_if_gated(self.config, self.verifier)
        # What the strategy needs regardless of call arguments (guidance scale is checked per
        # call): refuse before any model runs.
        for cap in self.strategy.requires:
            msg = self.adapter.missing(cap, {"guidance_scale": 2.0, "true_cfg_scale": 2.0})
            if msg:
                raise ValueError(msg)
        pdev = torch.device(getattr(pipe, "device", "cpu"))
        ddev = torch.device(detector.backend.device)
        if pdev.type != ddev.type or (pdev.index or 0) != (ddev.index or 0):
            raise ValueError(
                f"the detector is on {ddev} but the pipeline is on {pdev}: images would cross "
                f"devices every round; load the detector with device='{pdev}' (or move the "
                "pipeline)"
            )

    def _default_detector(self, pipe, name) -> MisalignmentDetector:
        """The detector named (a model name or folder), else the one the pipeline's card
        names, else `feedback.DEFAULT_MODEL`; at the card's eps for it where it has one, on
        the pipeline's device."""
        from feedback import DEFAULT_MODEL

        card = self.card
        name = str(name) if name else (card.detector if card and card.detector else None)
        name = name or DEFAULT_MODEL
        eps = card.threshold_for(name) if card is not None else None
        kw = {"threshold": eps} if eps is not None else {}
        return MisalignmentDetector.from_pretrained(
            name, device=getattr(pipe, "device", "cpu"), **kw
        )

    # ------------------------------------------------------------------ tokenizers & encoders
    @property
    def tokenizers(self) -> list:
        """The pipeline's tokenizers, in `prompt_embeds` order (none for the generic adapter)."""
        if not self.adapter.capabilities.weights:
            return []
        return [s.tokenizer for s in self.adapter.slots()]

    def encode(self, prompt: str, words=None, weights=None, **call_kw) -> dict:
        """Pipeline keyword arguments carrying `prompt`'s (weighted) embeddings."""
        return self.adapter.encode(prompt, words, weights, call_kw)

    # ------------------------------------------------------------------ checks
    def check_inputs(self, prompt, negative_prompt, output_type, call_kw=None) -> list[str]:
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
        self.strategy.check(self.adapter, call_kw or {})
        return prompts

    def parse_prompts(self, prompts: list[str]) -> list[ParsedPrompt]:
        """Each prompt's weight syntax read (`LoopConfig.prompt_syntax`); refuses, before any
        image, a prompt that is empty once its syntax is removed, and weights on a pipeline
        that takes prompt strings only."""
        out = []
        for p in prompts:
            pp = parse_prompt(p, self.config.prompt_syntax)
            if not pp.text.strip():
                raise ValueError(f"prompt {p!r} is empty once its weight syntax is removed")
            if pp.weighted and not self.adapter.capabilities.weights:
                raise ValueError(
                    f"prompt {p[:40]!r} carries weight syntax, but "
                    + self.adapter.missing("weights")
                    + "; remove the weights or pass LoopConfig(prompt_syntax='none') to send it "
                    "as text"
                )
            out.append(pp)
        return out

    def windows_cut(self, prompt: str, call_kw: dict | None = None) -> dict[str, list[str]]:
        """Per text encoder, the words of `prompt` its window cuts (encoders that see every
        word are left out)."""
        if not self.adapter.capabilities.weights:
            return {}
        out = {}
        for name, al in self.adapter.alignments(prompt, None, call_kw).items():
            cut = [w.text for w, t in zip(al.words, al.truncated) if t]
            if cut:
                out[name] = cut
        return out

    def _warn_windows(self, prompt, cut, call_kw):
        """One warning per prompt for every window that cuts it: the generator's encoders
        and the detector's (whose own per-call warning the loop silences)."""
        det_cut = self.detector.unscored_words(prompt)
        if not cut and not det_cut:
            return
        slots = {s.name: s for s in self.adapter.slots(call_kw)} if cut else {}
        seen = [n for n in slots if n not in cut]
        parts = [
            f"{n} reads {slots[n].window} tokens and misses {len(w)} words from {w[0]!r} on"
            for n, w in cut.items()
        ]
        tail = ""
        if cut:
            tail = (
                f"; {', '.join(seen)} see{'s' if len(seen) == 1 else ''} them, so their "
                "weights still reach the generator there"
                if seen
                else " (the generator never sees those words, so they are never re-weighted)"
            )
        msg = "; ".join(parts) + tail
        if det_cut:
            msg += ("; " if msg else "") + (
                f"the detector ({self.detector.backend.name}) leaves {len(det_cut)} words from "
                f"{det_cut[0]!r} on unscored"
            )
        warnings.warn(f"prompt too long ({prompt[:40]!r}...): {msg}", stacklevel=4)

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        prompt: str | list[str],
        *,
        num_images_per_prompt: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_round_end: Callable[[str, RoundRecord], None] | None = None,
        **pipe_kwargs,
    ):
        """Run the loop for each prompt (see `LoopConfig`).

        num_images_per_prompt: k images per round, and the k best per prompt returned
            (`images` holds k per prompt, in prompt order, best first; `config.max_images`,
            the budget, must be >= k). None: `config.samples_per_round` per round, one image
            per prompt returned.
        generator: as diffusers takes it: one `torch.Generator`, or a list of one per image of
            a round. The first round of a prompt is the pipeline's own call with it, so
            `fb(p, generator=g, num_images_per_prompt=k)` starts from exactly the images of
            `pipe(p, generator=g, num_images_per_prompt=k)`; later rounds draw their seeds
            from it (the first generator of a list). None: `config.seed`; image k of a prompt
            then has its own generator seeded base + k, reproducible alone.
        num_inference_steps, guidance_scale: None = the card's beside the pipeline's weights
            (`generation.cards`), else the pipeline's own call defaults.
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
        k = num_images_per_prompt or 1
        kept = torch.cat([h.rounds[r].images[i][None] for h in history for r, i in self._top(h, k)])
        images = self._convert(kept, output_type)
        if not return_dict:
            return (images, history)
        return FeedbackPipelineOutput(images=images, history=history)

    def stream(
        self,
        prompt: str | list[str],
        *,
        num_images_per_prompt: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        callback_on_step_end: Callable | None = None,
        output_type: str = "pt",
        **pipe_kwargs,
    ) -> Iterator[RoundEvent | PromptHistory]:
        """The loop as an iterator, in the caller's thread: a `RoundEvent` as soon as each round
        is scored, and each prompt's `PromptHistory` when its loop ends (same arguments as
        `__call__`; images in the records are tensors)."""
        call_kw = dict(pipe_kwargs)
        for k, v in (
            ("num_inference_steps", num_inference_steps),
            ("guidance_scale", guidance_scale),
            ("callback_on_step_end", callback_on_step_end),
        ):
            if v is not None:
                call_kw[k] = v
        if self.card is not None:
            for k in CALL_DEFAULT_KEYS:
                if k not in call_kw and k in self.card.call_defaults:
                    call_kw[k] = self.card.call_defaults[k]
        sources = self.check_inputs(prompt, negative_prompt, output_type, call_kw)
        parsed = self.parse_prompts(sources)
        prompts = [p.text for p in parsed]
        per_round = num_images_per_prompt or self.config.samples_per_round
        if num_images_per_prompt is not None:
            if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
                raise ValueError(
                    f"num_images_per_prompt must be a positive integer, got "
                    f"{num_images_per_prompt!r}"
                )
            if num_images_per_prompt > self.config.max_images:
                raise ValueError(
                    f"num_images_per_prompt={num_images_per_prompt} asks for more images than "
                    f"the budget LoopConfig.max_images={self.config.max_images}"
                )
        gens = self._user_generators(generator, len(prompts), per_round)
        negs = (
            [negative_prompt] * len(prompts)
            if negative_prompt is None or isinstance(negative_prompt, str)
            else list(negative_prompt)
        )
        # Each prompt's window cuts, computed once: warned here, recorded with every round.
        cuts = [self.windows_cut(p, call_kw) for p in prompts]
        for p, cut in zip(prompts, cuts):
            self._warn_windows(p, cut, call_kw)
        for j, (pp, neg, cut) in enumerate(zip(parsed, negs, cuts)):
            yield from self._rounds(
                pp,
                neg,
                self.config.seed + 100_003 * j,
                per_round,
                call_kw,
                cut,
                gens[j],
                explicit=num_images_per_prompt is not None,
            )

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _user_generators(generator, n_prompts: int, per_round: int) -> list:
        """Per prompt, the caller's generator(s) for its first round (None: seeds)."""
        if generator is None:
            return [None] * n_prompts
        if isinstance(generator, torch.Generator):
            return [generator] * n_prompts  # drawn from in turn, as one call would
        gens = list(generator)
        if not gens or not all(isinstance(g, torch.Generator) for g in gens):
            raise ValueError("`generator` must be a torch.Generator or a list of them")
        if len(gens) != n_prompts * per_round:
            raise ValueError(
                f"`generator` holds {len(gens)} generators but {n_prompts} prompt(s) x "
                f"{per_round} image(s) per round need {n_prompts * per_round}: pass one per "
                "image, or a single generator"
            )
        return [gens[j * per_round : (j + 1) * per_round] for j in range(n_prompts)]

    def _top(self, h: PromptHistory, k: int) -> list[tuple[int, int]]:
        """The k images to return for a prompt, best first: the kept one, then the next best
        finished images by the same rule."""
        out = [h.best]
        pool = [
            (rec.round, i)
            for rec in h.rounds
            if not rec.preview
            for i in range(len(rec.reports))
            if (rec.round, i) != h.best
        ]
        while len(out) < k and pool:
            reports = [h.rounds[r].reports[i] for r, i in pool]
            if self.verifier is not None:
                probs = [
                    h.rounds[r].p_right[i] if i < len(h.rounds[r].p_right) else 0.0 for r, i in pool
                ]
                j = self.verifier.select(reports, probs)
            else:
                from .selection import best_index

                j = best_index(reports)
            out.append(pool.pop(j))
        return out

    def _images(
        self,
        state: LoopState,
        plan: RoundPlan,
        seeds: list[int],
        call_kw: dict | None = None,
        user_gens=None,
    ) -> torch.Tensor:
        dev = getattr(self.pipe, "device", "cpu")
        if user_gens is not None:
            gens = user_gens  # the caller's own generator(s): the pipeline's own call
        else:
            gens = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
        call_kw = state.call_kw if call_kw is None else call_kw
        if plan.generate is not None:
            return plan.generate(state, gens)
        weights = plan.weights if plan.weights is not None else state.base_weights
        inputs = self.adapter.call_inputs(state.prompt, state.words, weights, call_kw)
        ctx = plan.context(state) if plan.context is not None else nullcontext()
        with ctx:
            return self.adapter.generate(
                inputs,
                generators=gens,
                negative_prompt=state.negative_prompt,
                call_kw=call_kw,
                n=len(seeds),
            )

    def _rounds(self, parsed: ParsedPrompt, neg, base, per_round, call_kw, cut, user_gen, explicit):
        cfg, det, strat = self.config, self.detector, self.strategy
        prompt = parsed.text
        state = LoopState(prompt, self.adapter, cfg, det.config.threshold, call_kw, neg)
        # the detector's words (as it splits the prompt) and the user's weights on them
        state.words = split_words(prompt)
        state.base_weights = parsed.word_weights(state.words)
        structure = parse_structure(prompt) if cfg.regions else None
        if structure is not None and not structure.regional:
            structure = None  # one object, nothing placed: the whole-image report is the answer
        budget = cfg.max_images
        full_steps = self.adapter.call_default("num_inference_steps", call_kw, None)
        steps_budget = cfg.max_steps or strat.step_budget(full_steps)
        state.step_budget = steps_budget
        state.score = lambda images: self._score(images, prompt, structure)[1]
        passes = self.adapter.cfg_passes(call_kw, neg)
        used, used_steps, next_seed, stopped = 0, 0, base, "max_rounds"
        plan: RoundPlan | None = strat.first(state)
        first_plain = plan.fix == "plain" and not plan.call_kw and plan.seeds is None
        if user_gen is not None and not first_plain:
            # a strategy whose first round is not the plain call: its seeds come from the
            # caller's generator
            g = user_gen if isinstance(user_gen, torch.Generator) else user_gen[0]
            next_seed = base = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            user_gen = None
        single = strat.single_round and not explicit
        n_rounds = cfg.max_rounds
        if single:
            n_rounds = 1
        elif strat.single_round:
            n_rounds = -(-budget // per_round)  # best-of-N in rounds of the k asked for
        elif strat.rounds_by_steps and steps_budget is not None:
            n_rounds = steps_budget  # every round spends at least one step
        for r in range(n_rounds):
            if plan.n is not None:
                n = plan.n if plan.preview else min(plan.n, budget - used)
            else:
                n = budget - used if single else min(per_round, budget - used)
            round_kw = {**state.call_kw, **plan.call_kw}
            per_image = round_kw.get("num_inference_steps", full_steps)
            if steps_budget is not None and per_image:
                # the compute budget: as many images as the steps left pay for
                n = min(n, (steps_budget - used_steps) // per_image)
                if n <= 0:
                    stopped = "max_steps"
                    break
            if n <= 0:
                stopped = "max_images"
                break
            gens_now = None
            if r == 0 and user_gen is not None:
                gens_now = user_gen  # one Generator, or one per image: as diffusers takes it
                seeds = [None] * n  # the caller's generator made them
            elif plan.seeds is not None:
                seeds = list(plan.seeds[:n])
            elif r == 0 or not plan.reuse_seeds or state.best is None or _no_seed(state):
                if r == 1 and user_gen is not None:
                    # later rounds draw their seeds from the caller's generator
                    g = user_gen if isinstance(user_gen, torch.Generator) else user_gen[0]
                    next_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
                seeds = list(range(next_seed, next_seed + n))
                next_seed += n
            else:
                s0 = state.rounds[state.best[0]].seeds[state.best[1]]
                seeds = [s0 + 7919 * k for k in range(n)]
            images = self._images(state, plan, seeds, round_kw, gens_now)
            if plan.reports is not None:
                reports = plan.reports  # scored as the round ran (a candidate stopped early)
            else:
                words, reports = self._score(images, prompt, structure)
                state.words = words
            weights = plan.weights if plan.weights is not None else state.base_weights
            rec = RoundRecord(
                r,
                plan.fix,
                images.detach().float().cpu(),
                reports,
                seeds,
                list(weights),
                to_a1111(prompt, state.words, weights),
                to_compel(prompt, state.words, weights),
                truncated=dict(cut),
                extra=dict(plan.extra),
                steps=plan.spent_steps if plan.spent_steps is not None else n * int(per_image or 0),
                preview=plan.preview,
                cfg_passes=passes,
            )
            state.rounds.append(rec)
            used += 0 if plan.preview else n  # previews are paid for in steps, not images
            used_steps += rec.steps
            state.used_steps = used_steps
            state.best, probs = rank(state.rounds, self.verifier, cfg.select_from_all_rounds)
            for rec_, p in zip(state.rounds, probs):
                rec_.p_right = p
            yield RoundEvent(prompt, rec, state.best)
            p_best = probs[state.best[0]][state.best[1]] if self.verifier else None
            if strat.single_round:
                if single or used >= budget:
                    stopped = "max_images"  # the whole budget spent: nothing stopped early
                    break
                plan = RoundPlan("plain")  # best-of-N in rounds of k: the next k samples
                continue
            if (
                not plan.preview
                and cfg.stop_when_aligned
                and satisfied(state.chosen, p_best, self.verifier)
            ):
                # what the detector (or the verifier) knows, not a verdict
                stopped = "verified" if self.verifier else "nothing_flagged"
                break
            if used >= budget:
                stopped = "max_images"
                break
            plan = strat.next(state)
            if cfg.gate_fixes:
                plan = gate(plan, state, self.verifier)
            if plan is None:
                # the fix has nothing to act on, but the image is not verified and budget is
                # left: a fresh sample (stopping here lost 13 points on one-object prompts for
                # attend_and_excite, whose flagged words often map onto no token)
                plan = RoundPlan("resample", extra={"no_fix": strat.name})
        source = parsed.source if parsed.source != prompt else None
        h, w = state.rounds[0].images.shape[-2:]
        settings = {
            "num_inference_steps": full_steps,
            "guidance_scale": self.adapter.call_default("guidance_scale", call_kw, None),
            "height": int(h),
            "width": int(w),
            "detector": det.backend.name,
            "eps": det.config.threshold,
            "verifier": self.verifier_source,
        }
        yield PromptHistory(prompt, state.rounds, state.best, stopped, source, settings)

    def _score(self, images: torch.Tensor, prompt: str, structure) -> tuple[list, list]:
        """(the detector's words, one report per image): region-aware when the prompt has
        a structure to judge."""
        with warnings.catch_warnings():
            # the window cut was warned once for the prompt (_warn_windows)
            warnings.filterwarnings("ignore", message="caption is .* tokens with the template")
            out = self.detector.score(images, [prompt] * len(images), nan_policy="mask")
        reports = reports_from_output(out)
        if structure is not None:
            reports = self._region_reports(images, prompt, out, reports)
        return out.words[0], reports

    def _region_reports(self, images, prompt, out, reports) -> list:
        """Region-aware reports of a round's images (`feedback.regions`); an image the
        detector dropped as non-finite keeps its (masked) whole-image report."""
        ok = [i for i, v in enumerate(out.valid.tolist()) if v]
        if not ok:
            return reports
        dev = self.detector.backend.device
        x = images[ok].detach().to(dev, torch.float32)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="caption is .* tokens with the template")
            regional = self.detector.score_regions(
                x,
                [prompt] * len(ok),
                whole=[reports[i] for i in ok],
                config=self.config.region_config,
            )
        out_reports = list(reports)
        for i, rep in zip(ok, regional):
            out_reports[i] = rep
        return out_reports

    def _convert(self, images: torch.Tensor, output_type: str):
        if output_type == "pt":
            return images
        arr = images.permute(0, 2, 3, 1).float().numpy()
        if output_type == "np":
            return arr
        from diffusers.image_processor import VaeImageProcessor

        return VaeImageProcessor.numpy_to_pil(arr)


def _no_seed(state) -> bool:
    """The kept image came from the caller's generator (no seed to reuse)."""
    r, i = state.best
    return state.rounds[r].seeds[i] is None
