"""Per-phrase classifier-free guidance (composable-diffusion style) for a stock pipeline.

With guidance g the pipeline computes  eps = eps_u + g (eps_c - eps_u).  Per-phrase guidance
adds one term per object phrase k:  + g w_k (eps_k - eps_u),  where eps_k is the UNet's
prediction conditioned on phrase k alone. The whole prompt keeps its own term (it carries the
relations between objects); a phrase term pulls its object's attributes together, which
scaling a word everywhere cannot (it does not say which object the word belongs to).

No pipeline code is copied: `phrase_guidance(pipe, ...)` wraps the UNet's forward for the
duration of one call, runs the phrase conditions in the same batch, and hands the pipeline
eps_c' = eps_c + sum_k w_k (eps_k - eps_u), so the pipeline's own guidance step yields the sum
above. It needs classifier-free guidance on (g > 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch


def _extend(x, b: int, p: int):
    """A (2B, ...) tensor with its conditional half appended once per phrase (recursively in
    dicts such as SDXL's `added_cond_kwargs`); anything else unchanged."""
    if isinstance(x, dict):
        return {k: _extend(v, b, p) for k, v in x.items()}
    if torch.is_tensor(x) and x.ndim > 0 and x.shape[0] == 2 * b:
        return torch.cat([x, x[b:].repeat(p, *([1] * (x.ndim - 1)))])
    return x


@contextmanager
def phrase_guidance(pipe, phrase_embeds: torch.Tensor, weights: Sequence[float]):
    """Within the block, `pipe`'s UNet adds the per-phrase guidance terms.

    pipe: a UNet pipeline, or a `generation.adapters.PipelineAdapter` (its denoiser is used).

    phrase_embeds: (P, L, D) text-encoder outputs of the P phrases (as `prompt_embeds`).
    weights: P weights w_k, relative to the pipeline's guidance scale (0 = no term; phrases
        with weight 0 are not run at all).
    """
    keep = [k for k, w in enumerate(weights) if w != 0]
    unet = pipe.denoiser if hasattr(pipe, "denoiser") else pipe.unet
    if not keep:
        yield
        return
    emb = phrase_embeds[keep]
    w = torch.tensor([float(weights[k]) for k in keep])
    inner = unet.forward

    def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
        n = sample.shape[0]
        if n % 2 or encoder_hidden_states.shape[0] != n:
            raise ValueError(
                "per-phrase guidance needs classifier-free guidance (guidance_scale > 1): the "
                f"UNet got a batch of {n} without an unconditional half"
            )
        b, p = n // 2, len(keep)
        ehs = emb.to(encoder_hidden_states).repeat_interleave(b, dim=0)  # phrase-major
        # One UNet call for the CFG pair and every phrase condition; the phrase rows take the
        # conditional half's latents, timesteps and extra inputs (SDXL's added_cond_kwargs).
        out = inner(
            _extend(sample, b, p),
            _extend(timestep, b, p),
            torch.cat([encoder_hidden_states, ehs]),
            *args,
            **{k: _extend(v, b, p) for k, v in kwargs.items()},
        )
        pred = out[0] if isinstance(out, tuple) else out.sample
        unc, cond, ph = pred[:b], pred[b:n], pred[n:].view(p, b, *pred.shape[1:])
        wk = w.to(pred).view(p, 1, *([1] * (pred.ndim - 1)))
        cond = cond + (wk * (ph - unc[None])).sum(0)
        merged = torch.cat([unc, cond])
        if isinstance(out, tuple):
            return (merged,)
        out.sample = merged
        return out

    unet.forward = forward
    try:
        yield
    finally:
        # The instance attribute shadowed the class's forward; removing it restores the UNet.
        del unet.forward
