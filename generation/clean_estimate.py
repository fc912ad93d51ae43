"""The denoiser's estimate of the finished image at an intermediate step (x0-hat), read from
the family's own scheduler while a pipeline call runs.

Schedulers that return `pred_original_sample` (DDIM, DDPM, Euler, Euler ancestral, LMS, Heun...)
give it directly; DPM-Solver(++) keeps it as its last converted model output; flow-matching
Euler gives it as `sample - sigma * velocity`. Other schedulers give none and early rejection
falls back (`clean_rule` says why).
"""

from __future__ import annotations

from contextlib import contextmanager

#: schedulers whose `step` returns `pred_original_sample` as its second output
_RETURNS_X0 = (
    "DDIMScheduler",
    "DDPMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LCMScheduler",
    "TCDScheduler",
)
_DPM = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler")


def clean_rule(scheduler) -> str | None:
    """How x0-hat is read from `scheduler` ("returned", "dpm", "flow"), or None."""
    names = {c.__name__ for c in type(scheduler).__mro__}
    if names & set(_RETURNS_X0):
        return "returned"
    if names & set(_DPM):
        algo = getattr(scheduler.config, "algorithm_type", "")
        return "dpm" if algo in ("dpmsolver++", "sde-dpmsolver++") else None
    if "FlowMatchEulerDiscreteScheduler" in names:
        return "flow"
    return None


@contextmanager
def capture_clean(scheduler, into: dict):
    """Within the block, every `scheduler.step` also writes its x0-hat (the batch's latents'
    shape) to `into["x0"]`; the instance attribute is removed afterwards, restoring the
    class's `step`."""
    rule = clean_rule(scheduler)
    if rule is None:
        raise ValueError(f"{type(scheduler).__name__} gives no estimate of the clean image")
    original = scheduler.step

    def step(model_output, timestep, sample, *args, **kwargs):
        out = original(model_output, timestep, sample, *args, **kwargs)
        if rule == "returned":
            x0 = out[1] if isinstance(out, tuple) else out.pred_original_sample
        elif rule == "dpm":
            x0 = scheduler.model_outputs[-1]
        else:  # flow matching: x_t = (1 - sigma) x0 + sigma noise, velocity = noise - x0
            sigma = scheduler.sigmas[scheduler.step_index - 1].to(sample.device, sample.dtype)
            x0 = sample - sigma * model_output
        into["x0"] = None if x0 is None else x0.detach()
        return out

    scheduler.step = step
    try:
        yield into
    finally:
        del scheduler.step
