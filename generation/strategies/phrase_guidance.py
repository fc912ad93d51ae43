"""phrase_guidance: the object phrase holding a flagged word gets its own guidance term
(composable-diffusion style, `generation.guidance`); words between phrases (relations) and
prompts of one phrase are re-weighted instead."""

from dataclasses import dataclass

from feedback.fields import number_in

from ..guidance import phrase_guidance
from ..phrases import raise_phrase_weights, split_phrases, word_phrases
from ..weighting import raise_weights
from .base import RoundPlan, Strategy, StrategyOptions, register


@dataclass
class PhraseGuidance(StrategyOptions):
    """phrase_guidance's settings.

    step: a phrase's guidance weight (relative to the pipeline's guidance scale; starts at 0)
        grows by this each round one of its words is flagged, ...
    max_weight: ... up to this.
    word_step, max_word_weight: words between phrases (relations) and one-phrase prompts are
        re-weighted instead, as `Reweight(step, max_weight)`.
    """

    step: float = 0.5
    max_weight: float = 1.5
    word_step: float = 0.25
    max_word_weight: float = 2.0

    def __post_init__(self):
        number_in(self, "step", 0, None, open_lo=True)
        number_in(self, "max_weight", 0, None)
        number_in(self, "word_step", 0, None, open_lo=True)
        number_in(self, "max_word_weight", 1.0, 10.0)


@register
class PhraseGuidanceStrategy(Strategy):
    name = "phrase_guidance"
    requires = ("weights", "phrase_guidance")
    options_class = PhraseGuidance

    def first(self, state):
        phrases = [p.text for p in split_phrases(state.prompt)]
        return RoundPlan(
            "plain", extra={"phrases": phrases, "phrase_weights": [0.0] * len(phrases)}
        )

    def next(self, state):
        cfg, opt = self.config, self.options
        chosen = state.chosen
        flags = [w.misaligned for w in chosen.words]
        phrases = split_phrases(state.prompt)
        pweights = list(state.last.extra.get("phrase_weights", []))
        if len(pweights) != len(phrases):  # the last round was a fresh sample (the card's gate)
            pweights = [0.0] * len(phrases)
        fix, reweight = "reweight", flags
        if len(phrases) >= 2:
            fix = "phrase_guidance"
            owner = word_phrases(state.words, phrases)
            pweights = raise_phrase_weights(
                pweights, owner, flags, step=opt.step, max_weight=opt.max_weight
            )
            # Words between phrases (relations) have no phrase to guide: re-weight them.
            reweight = [f and k is None for f, k in zip(flags, owner)]
        weights = raise_weights(
            state.last.weights,
            [w.score for w in chosen.words],
            reweight,
            threshold=state.threshold,
            step=opt.word_step,
            max_weight=opt.max_word_weight,
        )
        texts = [p.text for p in phrases]

        def context(st):
            if not any(pweights):
                from contextlib import nullcontext

                return nullcontext()
            import torch

            emb = torch.cat(
                [st.adapter.encode_plain(t, st.call_kw)["prompt_embeds"] for t in texts]
            )
            return phrase_guidance(st.adapter, emb, pweights)

        return RoundPlan(
            fix,
            weights=weights,
            reuse_seeds=not cfg.reseed,
            extra={"phrases": texts, "phrase_weights": list(pweights)},
            context=context,
        )
