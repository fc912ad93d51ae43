"""The rewards the fine-tuning recipes score images with: a CLIP4DM detector (any name
`feedback.MisalignmentDetector.from_pretrained` accepts, or a folder) at the threshold the
trained pipeline's card calibrated for it, and `make_reward`'s reward(images, prompts) -> (N,)
built on it (F-CLIPScore in eps units, the region score, CLIPScore, or a ground-truth verdict
the caller supplies, each with the same CLIPScore tie-break).

It is a library: it knows pipelines by folder (or hub id) and detectors by name; the recipes
resolve ShapesWorld's shipped names and supply its pixel oracle (`recipes/wiring.py`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

#: The rewards `make_reward` builds from the detector alone.
REWARDS = ("f_clip_score", "regions", "clip_score")

#: Weight of CLIPScore (0-2.5) added to the F-CLIPScore and verdict rewards: breaks ties (many
#: images have nothing flagged) far below one eps unit.
CLIP_TIE_BREAK = 1e-3

#: verdict(images, prompts) -> (N,) in [0, 1] (a tensor or a list of floats): how right each
#: image is by a ground truth (e.g. a pixel oracle).
Verdict = Callable[[torch.Tensor, list[str]], object]


def card_eps(detector: str, pipeline: str | Path | None = None) -> float | None:
    """The eps the card of the pipeline being trained (`generation.cards.PipelineCard` in a
    local folder) calibrated for `detector`, or None (no folder: a hub id or None; no card;
    none for that detector)."""
    from generation.cards import PipelineCard

    if pipeline is None:
        return None
    folder = Path(pipeline).expanduser()
    if not folder.is_dir():
        return None  # a hub id: no card of ours
    card = PipelineCard.load(folder)
    return card.threshold_for(detector) if card is not None else None


def load_detector(
    detector: str, device, eps: float | None = None, pipeline: str | Path | None = None
):
    """The detector `detector` at threshold `eps`; without one, the eps the card of the
    pipeline folder `pipeline` calibrated for this detector (`card_eps`), else the
    detector's own card (or the paper's -5e-5)."""
    from feedback import MisalignmentDetector

    eps = eps if eps is not None else card_eps(detector, pipeline)
    return MisalignmentDetector.from_pretrained(
        detector, device=str(device), **({"threshold": eps} if eps is not None else {})
    )


def make_reward(
    detector: str,
    which: str,
    device,
    eps: float | None = None,
    pipeline: str | Path | None = None,
    *,
    verdicts: Mapping[str, Verdict] | None = None,
):
    """reward(images, prompts) -> (N,): `which` is f_clip_score (F-CLIPScore / |eps| + a
    CLIPScore tie-break far below one eps unit), regions (the region score,
    `RewardConfig(regions=True)`), clip_score (CLIPScore), or a name in `verdicts` (that
    verdict + the same CLIPScore tie-break: what perfect feedback would select, the ceiling of
    selection-based recipes). `eps`, `pipeline`: as for `load_detector`."""
    from feedback import FeedbackReward, RewardConfig

    verdicts = dict(verdicts or {})
    if which not in REWARDS and which not in verdicts:
        raise ValueError(f"reward must be one of {(*REWARDS, *verdicts)}, got {which!r}")
    fr = FeedbackReward(
        load_detector(detector, device, eps, pipeline),
        RewardConfig(clip_score_weight=CLIP_TIE_BREAK, regions=which == "regions"),
    )

    def reward(images, prompts):
        rewards, info = fr(images, prompts)
        if which in ("f_clip_score", "regions"):
            return rewards
        clip = info.output.clip_score
        if which in verdicts:
            v = torch.as_tensor(
                verdicts[which](images, prompts), dtype=clip.dtype, device=clip.device
            )
            return v + CLIP_TIE_BREAK * clip
        return clip

    return reward
