"""Outputs of the feedback loop: every round of every prompt, and the images it kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from feedback import MisalignmentReport


@dataclass
class RoundRecord:
    """One round of one prompt.

    fix: what made this round's images ("plain", "reweight", "attend_and_excite").
    images: the round's images (a (n, 3, H, W) tensor in [0, 1]).
    reports: the detector's report per image.
    seeds: the seed of each image.
    weights: the per-word weights used (1 = unchanged), aligned with the report's words.
    prompt_a1111 / prompt_compel: the same weights as prompt syntax (for other tools).
    extra: what the round's strategy recorded beyond these fields (JSON-able): e.g.
        "token_indices" (attend_and_excite: the indices excited, start-of-text = 0), "phrases" /
        "phrase_weights" (phrase_guidance: the prompt's object phrases and the per-phrase
        guidance weight each had, relative to the guidance scale; 0 = no term), "box"
        (region_fix), "preview_steps" (preview), "reject_at" (early_reject).
    truncated: per text encoder whose window cuts the prompt, the words it never sees (an
        encoder missing here sees every word; e.g. CLIP's 77 tokens vs T5's 256-512).
    p_right: the verifier's P(right) per image (among all the prompt's images up to the last
        round; empty without a verifier).
    steps: denoiser steps the round spent (images x inference steps; a family running
        classifier-free guidance evaluates its denoiser on a doubled batch each step).
    preview: the round's images are few-step previews (`strategy="preview"`) or candidates
        stopped early (`strategy="early_reject"`, their x0 estimate at the check step): ranked
        to choose which seeds to finish, never kept.
    cfg_passes: denoiser evaluations per image per step (2 where the family runs
        classifier-free guidance on a doubled batch or a second call, else 1).
    """

    round: int
    fix: str
    images: Any
    reports: list[MisalignmentReport]
    seeds: list[int]
    weights: list[float]
    prompt_a1111: str
    prompt_compel: str
    truncated: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    p_right: list[float] = field(default_factory=list)
    steps: int = 0
    preview: bool = False
    cfg_passes: int = 1

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("images", "reports")}
        d["reports"] = [r.to_dict() for r in self.reports]
        return d


#: What each `PromptHistory.stopped` code means, in the words reports and the app show.
STOP_REASONS = {
    "nothing_flagged": "the detector found nothing wrong",
    "verified": "the verifier's P(right) reached its stop level",
    "max_images": "image budget spent",
    "max_rounds": "round budget spent",
    "max_steps": "step budget spent",
    "no_fix": "no fix left to try",  # kept for old records: the loop now re-samples instead
    "running": "running",
}


@dataclass
class RoundEvent:
    """What `FeedbackPipeline.stream` yields after each round: the prompt, its record, and
    the (round, index) the loop keeps so far (P(right) already set on every record)."""

    prompt: str
    record: RoundRecord
    best: tuple[int, int] | None = None


@dataclass
class PromptHistory:
    """Everything the loop did for one prompt; `best` = (round, index in round) kept.
    `prompt` is the text the detector scored (weight syntax removed); `source` what the user
    typed when it carried weight syntax, else None."""

    prompt: str
    rounds: list[RoundRecord]
    best: tuple[int, int]
    stopped: str
    """Why the loop stopped: "nothing_flagged" (the detector found nothing wrong in the kept
    image: what it knows, not proof the image is right), "verified" (the verifier's P(right)
    of the kept image reached the card's stop level), "max_images", "max_rounds" or "no_fix"
    (the strategy had nothing to try)."""
    source: str | None = None
    #: what the loop actually ran with: num_inference_steps, guidance_scale, height, width
    #: (of the images made), the detector and its eps, the verifier card's path or None
    settings: dict = field(default_factory=dict)

    @property
    def best_report(self) -> MisalignmentReport:
        r, i = self.best
        return self.rounds[r].reports[i]

    @property
    def stop_text(self) -> str:
        """`stopped` in words (see `STOP_REASONS`)."""
        return STOP_REASONS.get(self.stopped, self.stopped)

    @property
    def num_images(self) -> int:
        return sum(len(r.seeds) for r in self.rounds)

    @property
    def num_steps(self) -> int:
        """Denoiser steps spent on this prompt, previews included (the compute it cost)."""
        return sum(r.steps for r in self.rounds)

    @property
    def num_denoiser_evals(self) -> int:
        """Denoiser evaluations (steps x classifier-free guidance's passes), previews included."""
        return sum(r.steps * r.cfg_passes for r in self.rounds)

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            **({"source": self.source} if self.source is not None else {}),
            "best": list(self.best),
            "stopped": self.stopped,
            "num_images": self.num_images,
            "num_steps": self.num_steps,
            "num_denoiser_evals": self.num_denoiser_evals,
            "settings": dict(self.settings),
            "rounds": [r.to_dict() for r in self.rounds],
        }


@dataclass
class FeedbackPipelineOutput:
    """images: the kept image per prompt, in the requested `output_type`;
    history: per prompt, every round's images, reports, weights and seeds."""

    images: Any
    history: list[PromptHistory]

    def to_dict(self) -> dict:
        return {"history": [h.to_dict() for h in self.history]}
