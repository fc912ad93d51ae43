"""`LoopConfig`: which fix the loop applies, and its budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from feedback.regions import RegionConfig

#: What `clip4dm demo`/`generate`/`app` use unless told otherwise: the strategy with the best
#: oracle-judged satisfaction in `benchmarks/loop_faithfulness.py` on the shipped models
#: (README, "The loop on ShapesWorld"): at 4 images, no fix beat plain best-of-N there.
RECOMMENDED_STRATEGY = "best_of_n"


@dataclass
class LoopConfig:
    """How the feedback loop spends its image budget on one prompt.

    strategy: a registered strategy (`generation.strategies.STRATEGIES`; default the
        recommended one, `RECOMMENDED_STRATEGY`): "best_of_n" (one round of `max_images`
        samples, keep the best),
        "resample" (new seeds, same prompt, until the detector finds nothing misaligned or
        the budget is spent: best-of-N that stops early, the control for every fix below),
        "reweight" (raise the weights of misaligned words, regenerate),
        "phrase_guidance" (give the object phrase holding a misaligned word its own guidance
        term, composable-diffusion style, and regenerate; words between phrases, such as
        relations, and prompts of one phrase are re-weighted instead; see
        `generation.guidance` and `generation.phrases`) or
        "attend_and_excite" (hand the misaligned words to Attend-and-Excite, regenerate) or
        "region_fix" (regenerate only the box of the worst flagged word's object with the
        family's inpainting pipeline, keep the rest; needs `regions`) or "preview" (many
        few-step previews of the seeds a full run would use, ranked; only the best finished
        at full steps: search at equal compute, see `max_steps`) or "early_reject" (candidates
        at full steps, each read mid-run after `reject_at` steps and stopped there unless it
        ranks at least as high as every candidate before it).
    max_images: image budget per prompt (all rounds together).
    max_rounds: round budget per prompt (round 0 is the plain generation).
    samples_per_round: images per round (the last round may get fewer: the budget rules).
    weight_step: in "reweight", a flagged word's weight grows by
        `weight_step * min(score / threshold, 2)` each round it is flagged (so a word far below
        the threshold is raised faster, up to twice the step), ...
    max_weight: ... and never beyond this (weights start at 1 and only grow).
    reseed: new seeds every round (True) or the best image's seeds again (False: the fix is
        the only change, which isolates its effect on that image).
    stop_when_aligned: stop as soon as the best image so far has no misaligned word (the
        detector's threshold decides: use a calibrated one, or correct images get "fixed").
    select_from_all_rounds: return the best image the loop made (by F-CLIPScore, ties by
        CLIPScore) rather than the last round's best.
    phrase_step: in "phrase_guidance", a phrase's guidance weight (relative to the pipeline's
        guidance scale; starts at 0) grows by this each round one of its words is flagged, ...
    max_phrase_weight: ... up to this.
    ae_max_iter_to_alter, ae_scale_factor: Attend-and-Excite's own knobs.
    seed: base seed when no `generator` is passed; image k of a prompt uses seed + k.
    gate_fixes: with a verifier card that measured the strategy's fix on this generator
        (`Verifier.fix_gains`), apply the fix only where it beat a fresh sample for the kind
        of word the kept image has flagged, else sample fresh (`generation.verifier.gate`);
        False applies the fix every round, as asked.
    max_steps: a compute budget in denoiser steps per prompt (images x inference steps,
        previews included), beside `max_images`; None: images only. "preview" defaults it to
        the compute of best-of-`max_images` at full steps.
    preview_steps, preview_keep: "preview" samples as many candidates as the step budget
        allows at `preview_steps` steps (default: a fifth of the full steps, at least 2), the
        same seeds a full run would use, ranks them by the loop's selection rule and finishes
        the best `preview_keep` at full steps.
    reject_at: "early_reject" checks each candidate after this many steps (default: a fifth of
        the full steps, at least 2).
    regions: judge each object phrase on its own region (`feedback.regions`) for prompts with
        two or more objects or a placed one ("on the left"): selection, the stop rule, the
        verifier card's features and the fixes then see which object got which attribute and
        where it is. False: every prompt is judged on the whole image.
    region_config: how regions are proposed and isolated (`feedback.regions.RegionConfig`).
    prompt_syntax: how the prompt's own weight syntax is read (`generation.parse_prompt`):
        "auto" (A1111's `(word:1.3)`, `(word)`, `[word]` and Compel's `word++`, `(words)1.2`),
        "a1111", "compel", or "none" (the prompt is text, brackets and all). Parsed weights
        apply from round 0 on, the detector scores the clean text, and a prompt without any
        syntax is used unchanged.
    """

    strategy: str = RECOMMENDED_STRATEGY
    max_images: int = 4
    max_rounds: int = 4
    samples_per_round: int = 1
    weight_step: float = 0.25
    max_weight: float = 2.0
    reseed: bool = True
    stop_when_aligned: bool = True
    select_from_all_rounds: bool = True
    phrase_step: float = 0.5
    max_phrase_weight: float = 1.5
    ae_max_iter_to_alter: int = 25
    ae_scale_factor: float = 20.0
    seed: int = 0
    prompt_syntax: str = "auto"
    gate_fixes: bool = True
    max_steps: int | None = None
    preview_steps: int | None = None
    preview_keep: int = 2
    reject_at: int | None = None
    regions: bool = True
    region_config: RegionConfig = field(default_factory=RegionConfig)

    def __post_init__(self):
        from .strategies import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {self.strategy!r}")
        for name in ("max_images", "max_rounds", "samples_per_round"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer (the budget), got {v!r}")
        if not 1.0 <= self.max_weight <= 10.0:
            raise ValueError(f"max_weight must lie in [1, 10], got {self.max_weight}")
        if self.phrase_step <= 0 or self.max_phrase_weight < 0:
            raise ValueError(
                "phrase_step must be > 0 and max_phrase_weight >= 0, got "
                f"{self.phrase_step}, {self.max_phrase_weight}"
            )
        from .prompt_syntax import SYNTAXES

        if self.prompt_syntax not in SYNTAXES:
            raise ValueError(f"prompt_syntax must be one of {SYNTAXES}, got {self.prompt_syntax!r}")
        if self.max_steps is not None and (
            not isinstance(self.max_steps, int) or self.max_steps < 1
        ):
            raise ValueError(
                f"max_steps must be a positive integer or None, got {self.max_steps!r}"
            )
        if self.preview_steps is not None and (
            not isinstance(self.preview_steps, int) or self.preview_steps < 1
        ):
            raise ValueError(
                f"preview_steps must be a positive integer, got {self.preview_steps!r}"
            )
        r = self.reject_at
        if r is not None and (not isinstance(r, int) or r < 1):
            raise ValueError(f"reject_at must be a positive integer, got {self.reject_at!r}")
        if not isinstance(self.preview_keep, int) or self.preview_keep < 1:
            raise ValueError(f"preview_keep must be a positive integer, got {self.preview_keep!r}")
        if isinstance(self.region_config, dict):
            self.region_config = RegionConfig(**self.region_config)
        if not isinstance(self.region_config, RegionConfig):
            raise ValueError(
                f"region_config must be a feedback.regions.RegionConfig, got {self.region_config!r}"
            )
        if self.weight_step <= 0:
            raise ValueError(f"weight_step must be > 0, got {self.weight_step}")

    def to_dict(self) -> dict:
        return asdict(self)
