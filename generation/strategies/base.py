"""The strategy protocol: each fix decides the next round from the history; the loop
(`FeedbackPipeline`) keeps the budget, seeds, scoring, selection and the stop rule.

A strategy is a class with a `name`, the adapter capabilities it `requires`, and two methods:
`first(state)` (round 0's plan, normally the plain prompt) and `next(state)` (the next round's
plan from what the rounds so far found, or None when it has nothing to try). Registering it
(`@register`) makes it a valid `LoopConfig.strategy` and a choice of the CLI's `--strategy`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from feedback import MisalignmentReport, Word


@dataclass
class StrategyOptions:
    """A strategy's own settings: one dataclass per strategy, named for it (`Reweight(step=0.5)`),
    passed as `LoopConfig(strategy=...)`; a strategy's name string means its defaults."""

    #: the registered strategy these settings are for
    name: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass
class RoundPlan:
    """How the next round makes its images.

    fix: the name recorded for the round ("plain", "resample", "reweight", ...).
    weights: per detector word (1 = unchanged); None = the plain prompt string.
    reuse_seeds: True = the kept image's seed again (the fix is the only change), else new seeds.
    context: called with the loop state, returns a context manager the pipeline call runs in
        (e.g. a denoiser wrapper).
    generate: called with (state, generators) instead of the adapter's plain call (e.g. a
        different pipeline over the same modules); returns (n, 3, H, W) images in [0, 1].
    extra: what the fix acted on and anything else worth recording (JSON-able), kept in
        `RoundRecord.extra` (e.g. "token_indices", "phrases", "phrase_weights", "box").
    seeds: this round's seeds (one image each), instead of the loop's next ones.
    n: images this round, instead of `samples_per_round`.
    call_kw: pipeline call arguments for this round only (e.g. fewer `num_inference_steps`).
    preview: the images are previews: ranked, recorded, never kept (`RoundRecord.preview`).
    spent_steps / reports: set by `generate` when the round spent other than n x steps (a
        candidate stopped early) or has already scored its images (`LoopState.score`).
    """

    fix: str = "plain"
    weights: list[float] | None = None
    reuse_seeds: bool = False
    context: Callable[[LoopState], AbstractContextManager] | None = None
    generate: Callable[..., Any] | None = None
    extra: dict = field(default_factory=dict)
    seeds: list[int] | None = None
    n: int | None = None
    call_kw: dict = field(default_factory=dict)
    preview: bool = False
    spent_steps: int | None = None
    reports: list | None = None


@dataclass
class LoopState:
    """What a strategy sees: the prompt, the detector's words, every round so far and the kept
    image's place (round, index)."""

    prompt: str
    adapter: Any
    config: Any
    threshold: float
    call_kw: dict
    negative_prompt: str | None = None
    words: list[Word] | None = None
    #: the prompt's own weights (from its weight syntax; all 1 without), used by every round
    #: whose plan gives no weights of its own
    base_weights: list[float] | None = None
    rounds: list = field(default_factory=list)
    best: tuple[int, int] | None = None
    #: the loop's own scoring of a batch of images ((n, 3, H, W) in [0, 1]) against the prompt:
    #: one report per image, region-aware where the loop is
    score: Callable[[Any], list] | None = None
    #: denoiser steps spent on this prompt so far, and the step budget (None: images only)
    used_steps: int = 0
    step_budget: int | None = None

    @property
    def chosen(self) -> MisalignmentReport:
        """The report of the image the loop keeps so far."""
        r, i = self.best
        return self.rounds[r].reports[i]

    @property
    def last(self):
        return self.rounds[-1]


class Strategy:
    """Base class: the plain prompt in round 0, nothing after (override `next`)."""

    name: ClassVar[str] = ""
    #: Adapter capabilities this strategy needs (`PipelineAdapter.missing` explains a lack).
    requires: ClassVar[tuple[str, ...]] = ()
    #: One round of the whole budget (best-of-N) instead of rounds of `samples_per_round`.
    single_round: ClassVar[bool] = False
    #: Rounds bounded by the step budget, not `max_rounds` (one candidate per round).
    rounds_by_steps: ClassVar[bool] = False
    #: The strategy spends steps, not images: without `LoopConfig.max_steps` its budget is
    #: best-of-`max_images`' compute at full steps.
    budgets_steps: ClassVar[bool] = False

    def step_budget(self, full_steps: int | None) -> int | None:
        """The step budget when `LoopConfig.max_steps` is None (None: images only)."""
        if self.budgets_steps and full_steps:
            return self.config.max_images * full_steps
        return None

    #: This strategy's settings class (`StrategyOptions` subclass).
    options_class: ClassVar[type[StrategyOptions]] = StrategyOptions

    def __init__(self, config):
        self.config = config
        #: this strategy's own settings (`LoopConfig.strategy`)
        self.options = config.strategy

    def check(self, adapter, call_kw: dict) -> None:
        """Raise `ValueError` naming what is missing, before any image is made."""
        for cap in self.requires:
            msg = adapter.missing(cap, call_kw)
            if msg:
                raise ValueError(msg)

    def first(self, state: LoopState) -> RoundPlan:
        return RoundPlan("plain")

    def next(self, state: LoopState) -> RoundPlan | None:
        return None


#: name -> strategy class, filled by `register`.
STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make `cls` a loop strategy under `cls.name` (its settings class's
    `name` is set to match)."""
    if not cls.name or cls.name in STRATEGIES:
        raise ValueError(f"strategy name {cls.name!r} is empty or taken")
    if cls.options_class is StrategyOptions:
        # a strategy without settings of its own gets an empty settings class
        cls.options_class = dataclass(type(f"{cls.__name__}Options", (StrategyOptions,), {}))
    cls.options_class.name = cls.name
    STRATEGIES[cls.name] = cls
    return cls


def strategy_options(strategy) -> StrategyOptions:
    """`LoopConfig.strategy` as settings: a registered name means its defaults."""
    if isinstance(strategy, StrategyOptions):
        if strategy.name not in STRATEGIES:
            raise ValueError(f"{type(strategy).__name__} is not a registered strategy's settings")
        return strategy
    if strategy not in STRATEGIES:
        raise ValueError(
            f"LoopConfig.strategy must be one of {tuple(STRATEGIES)} or their settings "
            f"(generation.Reweight(...), ...), got {strategy!r}"
        )
    return STRATEGIES[strategy].options_class()


def get_strategy(config) -> Strategy:
    """The strategy `config.strategy` names, with its settings."""
    return STRATEGIES[config.strategy.name](config)
