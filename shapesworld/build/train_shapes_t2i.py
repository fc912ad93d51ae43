"""Train `shapes-sd-tiny`: a genuine, tiny diffusers `StableDiffusionPipeline` for ShapesWorld.

Usage (CPU; more processes on more devices):

    accelerate launch --cpu --num_processes 1 -m shapesworld.build.train_shapes_t2i \
        --output-dir runs/shapes-sd-tiny --max-minutes 45

Two stages, both on freshly rendered 32 px scenes (no dataset on disk):
1. an `AutoencoderKL` (blocks 32/64 -> a 16x16x4 latent) trained on reconstruction plus a small
   KL term; its `scaling_factor` is set from the latent standard deviation, as SD's was;
2. a `UNet2DConditionModel` (cross-attention at 8x8 and 4x4 only) trained on epsilon
   prediction, conditioned on the *frozen* text tower of the shipped `shapes-tiny` CLIP
   converted to a transformers `CLIPTextModel` (as Stable Diffusion conditions on a pretrained
   CLIP), with 10% empty captions for classifier-free guidance and an EMA copy.

The pipeline folder written to `OUTPUT/pipeline` (fp16 safetensors; rewritten every
`--export-every` steps and at the end) loads with stock
`StableDiffusionPipeline.from_pretrained(OUTPUT/pipeline)`. Wall-time limits are split between
the stages by `--vae-share`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast
from tqdm.auto import tqdm

from generation.finetune.ranges import (
    COUNT,
    NONNEG,
    NONNEG_INT,
    POSITIVE,
    SHARE,
    Range,
    check_ranges,
)
from recipes.cli import parse_config, run_recipe
from shapesworld.data import render_batch


@dataclass
class T2IConfig:
    """Training configuration (all fields are command-line flags)."""

    output_dir: str = "runs/shapes-sd-tiny"
    text_model: str = "shapes-tiny"
    """Shipped open_clip model whose text tower conditions the UNet (frozen)."""
    max_minutes: float = 45.0
    """Total wall-time budget for both stages (0 = step limits only)."""
    vae_share: float = 0.18
    """Share of --max-minutes given to the VAE stage."""
    vae_steps: int = 800
    unet_steps: int = 6000
    batch_size: int = 32
    vae_lr: float = 1e-3
    unet_lr: float = 1e-3
    kl_weight: float = 1e-6
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    p_two_objects: float = 0.6
    """Share of two-object scenes (the harder case; the sampler's default is 0.5)."""
    seed: int = 0
    export_every: int = 500
    vae_from: str = ""
    """A pipeline folder written by this recipe: reuse its VAE (no VAE stage)."""
    init_from: str = ""
    """A pipeline folder written by this recipe: continue from its VAE (kept frozen, no VAE
    stage) and its (EMA) UNet instead of starting from scratch."""

    RANGES: ClassVar[dict] = {
        "max_minutes": NONNEG,
        "vae_share": SHARE,
        "vae_steps": NONNEG_INT,
        "unet_steps": COUNT,
        "batch_size": COUNT,
        "vae_lr": POSITIVE,
        "unet_lr": POSITIVE,
        "kl_weight": NONNEG,
        "caption_dropout": Range(0, 1, hi_open=True),
        "ema_decay": Range(0, 1, hi_open=True),
        "p_two_objects": SHARE,
        "seed": NONNEG_INT,
        "export_every": NONNEG_INT,  # 0: export only at the end
    }

    def __post_init__(self):
        check_ranges(self)


RESOLUTION = 32


def build_text_encoder(name: str):
    """The shipped open_clip model's text tower as (CLIPTextModel, CLIPTokenizer), frozen."""
    import open_clip
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from feedback.convert import open_clip_to_transformers, write_clip_tokenizer
    from feedback.registry import shipped_model

    folder = shipped_model(name).path
    cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    clip = open_clip.CLIP(**cfg)
    clip.load_state_dict(
        {k: v.float() for k, v in load_file(folder / "open_clip_model.safetensors").items()}
    )
    hf = open_clip_to_transformers(clip, cfg, attn_implementation="eager")
    text = CLIPTextModel(hf.config.text_config)
    # transformers 4 keeps the tower under `text_model.`; transformers 5 puts it at the root.
    prefix = "text_model." if any(k.startswith("text_model.") for k in text.state_dict()) else ""
    sd = {
        prefix + k.removeprefix("text_model."): v
        for k, v in hf.state_dict().items()
        if k.startswith("text_model.")
    }
    missing, unexpected = text.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"text tower mapping incomplete: {missing[:3]} / {unexpected[:3]}")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tok = write_clip_tokenizer(tmp)
    tok.model_max_length = cfg["text_cfg"]["context_length"]
    return text.eval().requires_grad_(False), tok


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=RESOLUTION,
    )


def build_unet(cross_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=cross_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def schedulers():
    """(training scheduler, sampling scheduler) with SD's betas; "leading" spacing, since the
    first trailing timestep (t=999) carries almost no signal at this scale."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return DDPMScheduler(**common), DPMSolverMultistepScheduler(**common)


def encode_prompts(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    """Text conditioning exactly as `StableDiffusionPipeline.encode_prompt` builds it."""
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def export_pipeline(vae, unet, text_encoder, tokenizer, folder: Path, card: dict) -> None:
    from diffusers import StableDiffusionPipeline

    _, sampler = schedulers()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sampler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True, variant=None)
    # fp16 on disk keeps the shipped folder small; diffusers upcasts on load with torch_dtype.
    from safetensors.torch import load_file, save_file

    for f in folder.rglob("*.safetensors"):
        sd = load_file(f)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, f)
    (folder / "training.json").write_text(json.dumps(card, indent=2))


def train_vae(cfg: T2IConfig, accelerator: Accelerator, rng, minutes: float):
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    vae, opt = accelerator.prepare(vae, opt)
    t0, step, recon = time.time(), 0, float("nan")
    bar = tqdm(total=cfg.vae_steps, desc="vae", disable=not accelerator.is_main_process)
    while step < cfg.vae_steps and (minutes <= 0 or time.time() - t0 < minutes * 60):
        x, _ = render_batch(rng, cfg.batch_size, p_two_objects=cfg.p_two_objects)
        x = x.to(accelerator.device)
        post = accelerator.unwrap_model(vae).encode(x).latent_dist
        out = accelerator.unwrap_model(vae).decode(post.sample()).sample
        loss_rec = torch.nn.functional.mse_loss(out, x)
        loss = loss_rec + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        step += 1
        recon = 0.98 * recon + 0.02 * loss_rec.item() if step > 1 else loss_rec.item()
        bar.update(1)
        bar.set_postfix(mse=f"{recon:.4f}")
    bar.close()
    vae = accelerator.unwrap_model(vae).eval().requires_grad_(False)
    with torch.no_grad():
        x, _ = render_batch(rng, 256, p_two_objects=cfg.p_two_objects)
        z = vae.encode(x.to(accelerator.device)).latent_dist.mode()
        out = vae.decode(z).sample.clamp(-1, 1)
        psnr = float(10 * torch.log10(4.0 / torch.mean((out - x.to(out)) ** 2)))
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return vae, {"vae_steps": step, "vae_minutes": (time.time() - t0) / 60, "vae_psnr_db": psnr}


def load_run_vae(folder: str, device):
    """The frozen VAE of a pipeline this recipe wrote, its `vae_*` card entries, and the whole
    training card."""
    from diffusers import AutoencoderKL

    src = Path(folder)
    vae = AutoencoderKL.from_pretrained(src / "vae").float().eval().requires_grad_(False)
    prev = json.loads((src / "training.json").read_text())
    return vae.to(device), {k: v for k, v in prev.items() if k.startswith("vae_")}, prev


def main(cfg: T2IConfig) -> dict:
    from diffusers.training_utils import EMAModel

    # On CPU-only machines ranks started by torchrun must be told to join over gloo.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(cfg.seed + accelerator.process_index)
    rng = np.random.default_rng(cfg.seed + 1000 * accelerator.process_index)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    text_encoder, tokenizer = build_text_encoder(cfg.text_model)
    text_encoder.to(accelerator.device)

    if cfg.init_from:
        from diffusers import UNet2DConditionModel

        vae, card, prev = load_run_vae(cfg.init_from, accelerator.device)
        unet = UNet2DConditionModel.from_pretrained(Path(cfg.init_from) / "unet").float()
        card["continued_from"] = {
            "unet_steps": prev.get("unet_steps"),
            "minutes": prev.get("minutes_total"),
        }
    elif cfg.vae_from:
        vae, card, _ = load_run_vae(cfg.vae_from, accelerator.device)
        card["vae_from_earlier_run"] = True
        unet = build_unet(text_encoder.config.hidden_size)
    else:
        vae, card = train_vae(cfg, accelerator, rng, cfg.max_minutes * cfg.vae_share)
        unet = build_unet(text_encoder.config.hidden_size)
    accelerator.print(f"vae: {card}")
    sf = vae.config.scaling_factor

    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    unet, opt, sched = accelerator.prepare(unet, opt, sched)
    noise_sched, _ = schedulers()
    uncond = encode_prompts(text_encoder, tokenizer, [""]).to(accelerator.device)

    def export(step: int, loss: float) -> None:
        if not accelerator.is_main_process:
            return
        model = accelerator.unwrap_model(unet)
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
        info = {
            **card,
            "unet_steps": step,
            "unet_steps_total": step + (card.get("continued_from", {}).get("unet_steps") or 0),
            "loss": loss,
            "minutes_total": (time.time() - t_start) / 60
            + (card.get("continued_from", {}).get("minutes") or 0),
            "config": asdict(cfg),
        }
        export_pipeline(vae, model, text_encoder, tokenizer, out / "pipeline", info)
        ema.restore(model.parameters())

    deadline = t_start + cfg.max_minutes * 60 if cfg.max_minutes > 0 else float("inf")
    bar = tqdm(total=cfg.unet_steps, desc="unet", disable=not accelerator.is_main_process)
    step, running = 0, float("nan")

    def out_of_time() -> bool:
        # Rank 0's clock decides for every rank (no rank left behind in a collective).
        flag = torch.tensor([float(time.time() >= deadline)], device=accelerator.device)
        return bool(broadcast(flag, from_process=0).item())

    while step < cfg.unet_steps and not out_of_time():
        x, captions = render_batch(rng, cfg.batch_size, p_two_objects=cfg.p_two_objects)
        with torch.no_grad():
            z = vae.encode(x.to(accelerator.device)).latent_dist.sample() * sf
            cond = encode_prompts(text_encoder, tokenizer, captions).to(accelerator.device)
        drop = torch.rand(len(captions), device=cond.device) < cfg.caption_dropout
        cond = torch.where(drop[:, None, None], uncond.expand_as(cond), cond)
        noise = torch.randn_like(z)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(z),), device=z.device)
        pred = unet(noise_sched.add_noise(z, noise, t), t, cond).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        sched.step()
        ema.step(accelerator.unwrap_model(unet).parameters())
        step += 1
        running = loss.item() if step == 1 else 0.99 * running + 0.01 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if cfg.export_every and step % cfg.export_every == 0:
            export(step, running)
    bar.close()
    export(step, running)
    accelerator.wait_for_everyone()
    summary = {**card, "unet_steps": step, "loss": running, "minutes": (time.time() - t_start) / 60}
    accelerator.print(json.dumps(summary))
    return summary


def parse_args(argv=None) -> T2IConfig:
    return parse_config(T2IConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args)
