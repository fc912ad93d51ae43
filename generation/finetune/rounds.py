"""One round of reward fine-tuning data: sample images, score them, pick what to learn from;
and the denoising loss on the picked images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class RoundSamples:
    """A round's samples: `images` (N, 3, H, W) in [0, 1] (N = prompts x images per prompt,
    prompt-major), `prompts` N strings, `rewards` (N,) float, `seeds` N ints."""

    images: torch.Tensor
    prompts: list[str]
    rewards: torch.Tensor
    seeds: list[int]

    def best_per_prompt(self, per_prompt: int) -> list[int]:
        """Index of the highest-reward image of each prompt's group (first on ties)."""
        r = self.rewards.view(-1, per_prompt)
        return (r.argmax(dim=1) + torch.arange(r.shape[0]) * per_prompt).tolist()

    def filtered(
        self, per_prompt: int, keep_fraction: float = 1.0, min_reward: float = float("-inf")
    ) -> list[int]:
        """RAFT's filter: each prompt's best image if its reward is at least `min_reward`,
        then only the top `keep_fraction` of the prompts (by that reward; ties keep the
        earlier prompt). Indices in prompt order."""
        best = [i for i in self.best_per_prompt(per_prompt) if self.rewards[i] >= min_reward]
        n_top = round(keep_fraction * len(self.rewards) / per_prompt)
        return sorted(sorted(best, key=lambda i: -float(self.rewards[i]))[:n_top])


@torch.no_grad()
def sample_round(
    pipe,
    prompts: Sequence[str],
    per_prompt: int,
    seeds: Sequence[int],
    reward: Callable[[torch.Tensor, list[str]], torch.Tensor],
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    batch_size: int = 32,
) -> RoundSamples:
    """Generate `per_prompt` images of every prompt (image k of the round seeded `seeds[k]`, so a
    round is reproducible alone) and score them with `reward(images, prompts) -> (N,)`."""
    texts = [p for p in prompts for _ in range(per_prompt)]
    if len(seeds) != len(texts):
        raise ValueError(f"need {len(texts)} seeds (one per image), got {len(seeds)}")
    images, rewards = [], []
    for i in range(0, len(texts), batch_size):
        chunk, s = texts[i : i + batch_size], seeds[i : i + batch_size]
        gens = [torch.Generator(device=pipe.device).manual_seed(int(x)) for x in s]
        imgs = pipe(
            chunk,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=gens,
            output_type="pt",
        ).images
        images.append(imgs.float().cpu())
        rewards.append(reward(imgs, chunk).float().cpu())
    return RoundSamples(torch.cat(images), texts, torch.cat(rewards), [int(x) for x in seeds])


def training_scheduler(scheduler):
    """The forward (noising) process `scheduler` was trained with, as a `DDPMScheduler`.

    Inference schedulers are no good for noising training targets: DPM-Solver's `add_noise`,
    for one, looks the timestep up among its *inference* steps and, for any other timestep,
    silently uses the last step's noise level, so every training example would be noised alike
    whatever its timestep (fine-tuning on that collapses the model). diffusers' training
    examples noise with a `DDPMScheduler` of the same config; so do we."""
    from diffusers import DDPMScheduler

    if isinstance(scheduler, DDPMScheduler):
        return scheduler
    return DDPMScheduler.from_config(scheduler.config)


def denoising_loss(
    unet,
    scheduler,
    latents: torch.Tensor,
    text_embeds: torch.Tensor,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The diffusion training loss on clean `latents` (B, C, h, w) conditioned on
    `text_embeds` (B, L, D): noise at a random timestep, predict it (epsilon or v, as the
    scheduler is configured), mean squared error, optionally weighted per sample (B,).

    `scheduler` may be the pipeline's inference scheduler: the noise follows its config's
    training schedule (`training_scheduler`)."""
    scheduler = training_scheduler(scheduler)
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    t = t.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    else:
        target = noise
    pred = unet(noisy, t, encoder_hidden_states=text_embeds).sample
    per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if weights is None:
        return per.mean()
    return (per * weights.to(per)).sum() / weights.sum().clamp_min(1e-8)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N, 3, H, W) images in [0, 1] -> scaled VAE latents (a seeded sample of the posterior)."""
    dist = vae.encode(images.to(vae.device, vae.dtype) * 2 - 1).latent_dist
    return dist.sample(generator=generator) * vae.config.scaling_factor
