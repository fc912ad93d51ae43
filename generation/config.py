"""`LoopConfig`: which fix the loop applies, and its budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from feedback.fields import fail, one_of, positive_int
from feedback.regions import RegionConfig

from .strategies.base import StrategyOptions, strategy_options

#: What `clip4dm demo`/`generate`/`app` use unless told otherwise: the strategy with the best
#: oracle-judged satisfaction in `benchmarks/loop_faithfulness.py` on the shipped models
#: (README, "The loop on ShapesWorld"): at 4 images, no fix beat plain best-of-N there.
RECOMMENDED_STRATEGY = "best_of_n"


@dataclass
class LoopConfig:
    """How the feedback loop spends its budget on one prompt.

    strategy: a registered strategy's name (`generation.strategies.STRATEGIES`; its default
        settings) or its settings object, e.g. `Reweight(step=0.5, max_weight=2.5)`
        (default: the recommended one, `RECOMMENDED_STRATEGY`). Stored as the settings object
        (`config.strategy.name` is the name):
        "best_of_n" (`BestOfN`: one round of `max_images` samples, keep the best),
        "resample" (`Resample`: new seeds, same prompt, until the detector finds nothing
        misaligned or the budget is spent: best-of-N that stops early, the control for every
        fix below),
        "reweight" (`Reweight`: raise the weights of misaligned words, regenerate),
        "phrase_guidance" (`PhraseGuidance`: give the object phrase holding a misaligned word
        its own guidance term, composable-diffusion style, and regenerate; words between
        phrases, such as relations, and prompts of one phrase are re-weighted instead; see
        `generation.guidance` and `generation.phrases`),
        "attend_and_excite" (`AttendAndExcite`: hand the misaligned words to
        Attend-and-Excite, regenerate),
        "region_fix" (`RegionFix`: regenerate only the box of the worst flagged word's object
        with the family's inpainting pipeline, keep the rest; needs `regions`),
        "preview" (`Preview`: many few-step previews of the seeds a full run would use,
        ranked; only the best finished at full steps: search at equal compute, see
        `max_steps`) or "early_reject" (`EarlyReject`: candidates at full steps, each read
        mid-run and stopped there unless it ranks at least as high as every one before it).
    max_images: image budget per prompt (all rounds together).
    max_rounds: round budget per prompt (round 0 is the plain generation).
    samples_per_round: images per round (the last round may get fewer: the budget rules).
    reseed: a fix's round uses new seeds (True) or the kept image's seeds again (False: the
        fix is the only change, which isolates its effect on that image).
    stop_when_aligned: stop as soon as the best image so far has no misaligned word (the
        detector's threshold decides: use a calibrated one, or correct images get "fixed").
    select_from_all_rounds: return the best image the loop made (by F-CLIPScore, ties by
        CLIPScore) rather than the last round's best.
    seed: base seed when no `generator` is passed; image k of a prompt uses seed + k.
    gate_fixes: with a verifier card that measured the strategy's fix on this generator
        (`generation.fixes`), apply the fix only where it beat a fresh sample for the kind
        of word the kept image has flagged, else sample fresh (`generation.verifier.gate`);
        False applies the fix every round, as asked.
    max_steps: a compute budget in denoiser steps per prompt (images x inference steps,
        previews included), beside `max_images`; None: images only ("preview" and
        "early_reject" default it to the compute of best-of-`max_images` at full steps).
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

    strategy: str | StrategyOptions = RECOMMENDED_STRATEGY
    max_images: int = 4
    max_rounds: int = 4
    samples_per_round: int = 1
    reseed: bool = True
    stop_when_aligned: bool = True
    select_from_all_rounds: bool = True
    seed: int = 0
    prompt_syntax: str = "auto"
    gate_fixes: bool = True
    max_steps: int | None = None
    regions: bool = True
    region_config: RegionConfig = field(default_factory=RegionConfig)

    def __post_init__(self):
        from .prompt_syntax import SYNTAXES

        self.strategy = strategy_options(self.strategy)
        positive_int(self, "max_images", "max_rounds", "samples_per_round")
        positive_int(self, "max_steps", optional=True)
        one_of(self, "prompt_syntax", SYNTAXES)
        if isinstance(self.region_config, dict):
            self.region_config = RegionConfig(**self.region_config)
        if not isinstance(self.region_config, RegionConfig):
            fail(self, "region_config", "a feedback.regions.RegionConfig")

    @property
    def strategy_name(self) -> str:
        return self.strategy.name

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strategy"] = self.strategy.to_dict()
        return d
