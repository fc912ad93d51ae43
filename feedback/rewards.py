"""Rewards for trainers: per image (DDPO-style) and per token of the generator's tokenizer.

Normalization. Raw CLIP4DM scores have a model-dependent scale (the paper's eps is -5e-5 on
ViT-B/32; the shipped `shapes-tiny` card calibrates eps = -2.6e-3). A reward should mean the
same on any CLIP, so rewards are expressed **in units of the detector's threshold**:
`unit = |config.threshold|`, which for a shipped model is its card's calibrated eps (the score
below which 10% of correct captions get a false flag) and otherwise the paper's eps. So:

- image reward = F-CLIPScore / unit  (+ `clip_score_weight` x CLIPScore): 0 when nothing is
  misaligned, about -1 for one word just at the threshold on a low-CLIPScore image;
- word/token reward = word score / unit: below -1 means "flagged".

The paper-faithful scores in `DetectorOutput` are untouched; only these rewards are scaled.

Region mode (`RewardConfig(regions=True)`): prompts of two or more objects (or a placed one)
are judged by `feedback.regions` -- each object phrase on its own region, each placement by
where the objects are -- and the image reward is the region score (`RegionReport.score`: the
weakest object's cosine on its region, lowered by failed relations and missing objects;
cosine units, so a group's rewards compare directly); a prompt of one object gets its
whole-image cosine. Word rewards are the region words' scores in units, clipped to
[-`word_clip`, `word_clip`] (a relation word's score is a cosine margin, far larger than an
attribution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .alignment import WordTokens, align_words
from .detector import DetectorOutput, MisalignmentDetector


@dataclass
class RewardConfig:
    """How `FeedbackReward` turns detector output into rewards.

    unit: the score that counts as -1 (None = |detector threshold|, see module docstring).
    clip_score_weight: weight of CLIPScore (0-2.5 scale) added to the image reward.
    invalid_reward: reward given to a sample whose scores were non-finite (it is also marked
        invalid in the info, so a trainer can drop it instead).
    regions: judge prompts of two or more objects by regions (see the module docstring).
    word_clip: in region mode, word rewards are clipped to [-word_clip, word_clip].
    """

    unit: float | None = None
    clip_score_weight: float = 0.0
    invalid_reward: float = 0.0
    regions: bool = False
    word_clip: float = 4.0


@dataclass
class RewardInfo:
    """What a reward call saw: the detector output and the normalized word scores.

    word_rewards: (B, W) word score / unit (0 where `output.word_mask` is False).
    valid: (B,) False for samples dropped for non-finite scores.
    unit: the normalization actually used.
    """

    output: DetectorOutput
    word_rewards: torch.Tensor
    valid: torch.Tensor
    unit: float
    regions: list | None = None

    def to_dict(self) -> dict:
        return {
            "output": self.output.to_dict(),
            "word_rewards": self.word_rewards.tolist(),
            "valid": self.valid.tolist(),
            "unit": self.unit,
            "regions": None if self.regions is None else [r.to_dict() for r in self.regions],
        }


@dataclass
class TokenRewards:
    """Per-token rewards on a generator tokenizer's padded input.

    rewards: (B, L) float32, each token's word reward (mean over the words it belongs to; 0 on
        start/end/padding tokens and on tokens of no scored word).
    mask: (B, L) bool, True on tokens that belong to at least one scored word.
    input_ids: (B, L) the tokenizer's ids (padding="max_length", truncation at L).
    alignments: per prompt, the word-to-position map used.
    """

    rewards: torch.Tensor
    mask: torch.Tensor
    input_ids: torch.Tensor
    alignments: list[WordTokens]


class FeedbackReward:
    """`reward(images, prompts) -> (rewards [B], info)`, the signature DDPO-style trainers call.

    images: (B, 3, H, W) float tensor in [0, 1] on any device (e.g. a pipeline's
        `output_type="pt"`), or PIL images / paths.
    A third positional argument (per-prompt metadata, as trl's DDPO passes) is accepted and
    ignored. Non-finite samples never raise: they get `invalid_reward` and `valid` False.
    """

    def __init__(self, detector: MisalignmentDetector, config: RewardConfig | None = None):
        self.detector = detector
        self.config = config or RewardConfig()
        unit = self.config.unit if self.config.unit is not None else -detector.config.threshold
        if not unit > 0:
            raise ValueError(
                f"reward unit must be > 0, got {unit}: set RewardConfig.unit or give the "
                "detector a negative threshold"
            )
        self.unit = float(unit)

    def image_reward(self, f_clip_score, clip_score):
        """The image reward from already computed scores (floats or tensors of the same
        shape), e.g. from a loop's reports, without scoring the images again."""
        return f_clip_score / self.unit + self.config.clip_score_weight * clip_score

    def __call__(self, images, prompts, metadata=None) -> tuple[torch.Tensor, RewardInfo]:
        out = self.detector.score(images, list(prompts), nan_policy="mask")
        if self.config.regions:
            return self._region_rewards(images, out)
        rewards = self.image_reward(out.f_clip_score, out.clip_score)
        rewards = torch.where(out.valid, rewards, self.config.invalid_reward)
        info = RewardInfo(out, out.word_scores / self.unit, out.valid, self.unit)
        return rewards, info

    def _region_rewards(self, images, out: DetectorOutput) -> tuple[torch.Tensor, RewardInfo]:
        from .detector import reports_from_output

        if not isinstance(images, torch.Tensor):
            from torchvision.transforms.functional import pil_to_tensor

            loaded = self.detector._load_images(images)
            if len({im.size for im in loaded}) > 1:
                raise ValueError("region rewards need images of one size (a batch tensor)")
            images = torch.stack([pil_to_tensor(im).float() / 255 for im in loaded])
        whole = reports_from_output(out)
        dev = out.cosine.device
        ok = [i for i, v in enumerate(out.valid.tolist()) if v]
        regions: list = list(whole)
        if ok:
            x = images[ok].detach().to(self.detector.backend.device, torch.float32)
            for i, rep in zip(
                ok,
                self.detector.score_regions(
                    x, [out.captions[i] for i in ok], whole=[whole[i] for i in ok]
                ),
            ):
                regions[i] = rep
        score = torch.tensor([float(getattr(r, "score", r.cosine)) for r in regions], device=dev)
        rewards = score + self.config.clip_score_weight * out.clip_score
        rewards = torch.where(out.valid, rewards, self.config.invalid_reward)
        words = torch.zeros_like(out.word_scores)
        for i in ok:
            for j, w in enumerate(regions[i].words[: words.shape[1]]):
                if w.score is not None and bool(out.word_mask[i, j]):
                    words[i, j] = w.score / self.unit
        c = self.config.word_clip
        info = RewardInfo(out, words.clamp(-c, c), out.valid, self.unit, regions)
        return rewards, info

    def token_rewards(
        self,
        info: RewardInfo,
        tokenizer,
        *,
        max_length: int | None = None,
        prefix: str = "",
        keep=None,
        aligner=None,
    ) -> TokenRewards:
        """Word rewards of `info` spread onto `tokenizer`'s positions for the same prompts
        (any tokenizer: `pipe.tokenizer`, SDXL's `tokenizer_2`, a T5 or Gemma one with its
        `max_sequence_length`). For a whole pipeline, `generation`'s adapters do this per text
        encoder: `adapter_for(pipe).token_rewards(info)`."""
        return token_rewards(
            info.output,
            info.word_rewards,
            tokenizer,
            max_length=max_length,
            prefix=prefix,
            keep=keep,
            aligner=aligner,
        )


def token_rewards(
    output: DetectorOutput,
    word_values: torch.Tensor,
    tokenizer,
    *,
    max_length: int | None = None,
    prefix: str = "",
    keep=None,
    aligner=None,
) -> TokenRewards:
    """Spread per-word values (B, W) of `output`'s prompts onto `tokenizer`'s input positions
    (`max_length`, `prefix`, `keep`: as in `align_words`; L is the kept length).

    aligner(prompt, words) -> WordTokens: replaces `align_words` (an encoder that reads a
    transformed prompt, e.g. lower-cased, supplies its own; `TextSlot.align` is one)."""
    max_length = max_length or tokenizer.model_max_length
    length = max_length if keep is None else len(keep)
    bsz = len(output.captions)
    rewards = torch.zeros(bsz, length)
    counts = torch.zeros(bsz, length)
    ids = torch.zeros(bsz, length, dtype=torch.long)
    values = word_values.detach().float().cpu()
    scored = output.word_mask.cpu()
    alignments = []
    for b, prompt in enumerate(output.captions):
        if aligner is not None:
            al = aligner(prompt, output.words[b])
        else:
            al = align_words(
                prompt,
                tokenizer,
                words=output.words[b],
                max_length=max_length,
                prefix=prefix,
                keep=keep,
            )
        if len(al.input_ids) != length:
            raise ValueError(
                f"the aligner gave {len(al.input_ids)} positions for {prompt[:40]!r}, expected "
                f"{length} (max_length/keep disagree with it)"
            )
        alignments.append(al)
        ids[b] = torch.tensor(al.input_ids)
        for i, pos in enumerate(al.positions):
            if pos and scored[b, i]:
                rewards[b, pos] += values[b, i]
                counts[b, pos] += 1
    mask = counts > 0
    return TokenRewards(rewards / counts.clamp(min=1), mask, ids, alignments)
