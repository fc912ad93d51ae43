"""The policy-gradient objective the online recipes share (DDPO, and GRPO with a KL anchor):
PPO's clipped ratio on one recorded denoising step of a minibatch, plus `kl` times the KL of
the current policy's step to the frozen base policy's on the same latent (the LoRA adapters
switched off, or the frozen copy of a fully trained UNet), so the model is held near the base
while it climbs the reward."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampler import ddim_scheduler, ddim_step_logprob, ddim_step_mean, guided_eps, step_kl
from .trainable import reference_policy


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """Each reward against its prompt's group of `group` images: (r - mean) / (std + 1e-6)."""
    g = rewards.view(-1, group)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-6)).flatten()


@dataclass(frozen=True)
class PolicyConfig:
    """The policy objective's settings (a recipe builds one from its own config)."""

    sample_steps: int = 20
    """Denoising steps of the sampler that recorded the trajectories."""
    guidance: float = 4.0
    """Classifier-free guidance scale the trajectories were sampled at."""
    eta: float = 1.0
    """DDIM stochasticity of the sampling policy (> 0)."""
    clip_range: float = 1e-4
    """PPO ratio clip."""
    kl: float = 0.0
    """Weight of the per-step KL to the frozen base policy (0: plain DDPO)."""


def policy_objective(pipe, got, gen: torch.Generator, cfg: PolicyConfig):
    """(number of items, loss_fn(unet, idx)) for `run_rounds` (bind `cfg`: run_rounds passes
    its own `RoundsConfig` as the fourth argument); `got.payload` is (Trajectories,
    advantages). `loss_fn` records the minibatch's mean KL in `loss_fn.kl`."""
    kl = cfg.kl
    tr, adv = got.payload
    sched = ddim_scheduler(pipe, cfg.sample_steps)
    n = len(adv)
    neg, pos = tr.embeds[:n], tr.embeds[n:]

    def loss_fn(unet, idx):
        j = int(torch.randint(0, len(tr.timesteps), (1,), generator=gen))
        t = tr.timesteps[j]
        emb = torch.cat([neg[idx], pos[idx]])
        x = tr.latents[j, idx]
        eps = guided_eps(unet, x, t, emb, cfg.guidance)
        _, logp = ddim_step_logprob(sched, eps, t, x, cfg.eta, prev_sample=tr.latents[j + 1, idx])
        ratio = torch.exp(logp - tr.log_probs[j, idx])
        a = adv[idx].to(ratio)
        clipped = torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range)
        loss = torch.maximum(-a * ratio, -a * clipped).mean()
        if kl > 0:
            with torch.no_grad(), reference_policy(unet) as base:
                eps_ref = guided_eps(base, x, t, emb, cfg.guidance)
            mean, std = ddim_step_mean(sched, eps, t, x, cfg.eta)
            mean_ref, _ = ddim_step_mean(sched, eps_ref, t, x, cfg.eta)
            d = step_kl(mean, mean_ref, std).mean()
            loss_fn.kl.append(float(d.detach()))
            loss = loss + kl * d
        return loss

    loss_fn.kl = []
    return n, loss_fn
