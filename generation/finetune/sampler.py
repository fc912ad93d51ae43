"""A stochastic DDIM sampler that records each step's log-probability (DDPO's policy).

diffusers' `DDIMScheduler.step` draws x_{t-1} with `eta > 0` but does not return the density
of what it drew, and the log-prob helpers that existed (trl's DDPO, ddpo-pytorch) were removed
or pin diffusers 0.17; so the Gaussian step is written here, on the scheduler's own
`alphas_cumprod`, `final_alpha_cumprod` and timestep spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def ddim_step_mean(scheduler, eps: torch.Tensor, t: int, x_t: torch.Tensor, eta: float):
    """The Gaussian of one DDIM step x_t -> x_{t-1}: (mean, std), std = eta * sqrt(DDIM
    variance) (a scalar tensor)."""
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev_t = int(t) - step
    a_t = scheduler.alphas_cumprod[int(t)].to(x_t)
    a_prev = (
        scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
    ).to(x_t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if scheduler.config.clip_sample:  # as DDIMScheduler.step does (latent pipelines turn it off)
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * var.clamp_min(0).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp_min(0).sqrt() * eps
    return mean, std


def ddim_step_logprob(
    scheduler,
    eps: torch.Tensor,
    t: int,
    x_t: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_{t-1} ~ N(mean, std^2) with std = eta * sqrt(DDIM variance).

    Returns (x_{t-1}, log-prob (B,) of it, averaged over its elements). Pass `prev_sample` to
    evaluate the density of a recorded step instead of drawing one.
    """
    from diffusers.utils.torch_utils import randn_tensor

    mean, std = ddim_step_mean(scheduler, eps, t, x_t, eta)
    if prev_sample is None:
        noise = randn_tensor(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        prev_sample = mean + std * noise
    std = std.clamp_min(1e-6)
    logp = -((prev_sample.detach() - mean) ** 2) / (2 * std**2) - std.log()
    logp = logp - 0.5 * math.log(2 * math.pi)
    return prev_sample, logp.mean(dim=tuple(range(1, logp.ndim)))


def step_kl(
    mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor, floor: float = 1e-2
) -> torch.Tensor:
    """KL(N(mean_p, s^2) || N(mean_q, s^2)) of one step, averaged over elements: (B,), with
    s = max(std, floor): DDIM's last step is (nearly) deterministic, where the exact KL of two
    near-deterministic steps would explode for any difference of their means."""
    d = (mean_p - mean_q) ** 2 / (2 * std.clamp_min(floor) ** 2)
    return d.mean(dim=tuple(range(1, d.ndim)))


def ddim_scheduler(pipe, num_inference_steps: int):
    """A DDIM scheduler on the pipeline's noise schedule (and timestep spacing), without x0
    clipping, as latent diffusion pipelines configure it."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    sched.set_timesteps(num_inference_steps, device=pipe.device)
    return sched


@dataclass
class Trajectories:
    """Recorded sampling: `latents` (T+1, B, C, h, w), `log_probs` (T, B), `timesteps` (T,),
    `embeds` (2B, L, D) [negative; positive], `images` (B, 3, H, W) in [0, 1]."""

    latents: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor
    embeds: torch.Tensor
    images: torch.Tensor


def guided_eps(unet, x, t, embeds, guidance: float) -> torch.Tensor:
    """Classifier-free guided noise prediction; `embeds` is [negative; positive] (2B rows)."""
    pred = unet(torch.cat([x, x]), t, encoder_hidden_states=embeds).sample
    unc, cond = pred.chunk(2)
    return unc + guidance * (cond - unc)


@torch.no_grad()
def sample_with_logprob(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    eta: float = 1.0,
) -> Trajectories:
    """Sample one image per prompt (image k from a generator seeded `seeds[k]`) with the
    pipeline's UNet/VAE/text encoder and a DDIM scheduler built from its config."""
    from diffusers.utils.torch_utils import randn_tensor

    dev = pipe.device
    sched = ddim_scheduler(pipe, num_inference_steps)
    pos, neg = pipe.encode_prompt(prompts, dev, 1, True, [""] * len(prompts))
    embeds = torch.cat([neg, pos])
    gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
    px = pipe.unet.config.sample_size
    shape = (len(prompts), pipe.unet.config.in_channels, px, px)
    x = randn_tensor(shape, generator=gens, device=dev, dtype=embeds.dtype) * sched.init_noise_sigma
    lat, lps = [x], []
    for t in sched.timesteps:
        eps = guided_eps(pipe.unet, sched.scale_model_input(x, t), t, embeds, guidance_scale)
        x, lp = ddim_step_logprob(sched, eps, t, x, eta, generator=gens)
        lat.append(x)
        lps.append(lp)
    img = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    return Trajectories(
        torch.stack(lat),
        torch.stack(lps),
        sched.timesteps.clone(),
        embeds,
        (img / 2 + 0.5).clamp(0, 1).float(),
    )
