"""The shipped tiny text-to-image pipeline (`shapes-sd-tiny`) and held-out prompts for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .captions import describe
from .foils import HELD_OUT_SEED
from .scenes import Scene, sample_scene

PIPELINE_NAME = "shapes-sd-tiny"
#: The loop's default detector on the shipped pipeline (tuned on its generated images). Its
#: eps is the pipeline card's calibration for it (`loop_threshold`): the one value the CLI
#: (demo, generate, app), the benchmarks and the README use.
LOOP_DETECTOR = "shapes-tiny-gen2"
#: Seeds of the prompt sets (the training recipe draws scenes from other seeds).
PROMPT_SEED = HELD_OUT_SEED + 11
VALIDATION_SEED = HELD_OUT_SEED + 13
#: Prompts of the verifier's calibration pool (never a benchmark's or a training pool's).
CALIBRATION_SEED = HELD_OUT_SEED + 23
#: Seed of the fine-tuning recipes' training prompts (round r, process k: + 1000 r + k).
FINETUNE_SEED = HELD_OUT_SEED + 10_000_019
#: Seed of the fine-tuning recipes' validation prompts (model selection; never trained on, and
#: not the benchmarks' test prompts).
FINETUNE_VALIDATION_SEED = HELD_OUT_SEED + 29


def pipeline_path(name: str = PIPELINE_NAME) -> Path:
    """Folder of a shipped diffusers pipeline (`StableDiffusionPipeline.from_pretrained` reads
    it offline)."""
    path = Path(__file__).parent / "weights" / name
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no shipped pipeline {name!r} at {path}: train one with "
            "`python -m shapesworld.build.train_shapes_t2i` and package it with "
            "`python -m shapesworld.build.package_shapes_t2i`"
        )
    return path


def _card_sampling() -> dict:
    from generation.cards import PipelineCard

    card = PipelineCard.load(Path(__file__).parent / "weights" / PIPELINE_NAME)
    return dict(card.call_defaults) if card is not None else {}


#: The sampling settings the shipped pipeline was trained for, read once from the
#: `call_defaults` of the card in its folder (`generation.cards`): the one place they live.
SAMPLING: dict = _card_sampling()
STEPS: int = SAMPLING["num_inference_steps"]
GUIDANCE: float = SAMPLING["guidance_scale"]


def load_pipeline(name: str = PIPELINE_NAME, *, device: str = "cpu", progress: bool = False):
    """The shipped pipeline in fp32 on `device` (it ships as fp16 safetensors)."""
    import torch
    from diffusers import StableDiffusionPipeline

    # from_pretrained loads the fp16 files as fp32 unless told otherwise (fp16 on CPU is slow).
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path(name), local_files_only=True)
    pipe = pipe.to(device=device, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


@dataclass(frozen=True)
class Prompt:
    """A ShapesWorld prompt and the scene it was written from (`n_objects` 1 or 2)."""

    text: str
    scene: Scene

    @property
    def n_objects(self) -> int:
        return len(self.scene.objects)


def prompt_set(n: int, *, n_objects: int | None = None, seed: int = PROMPT_SEED) -> list[Prompt]:
    """`n` deterministic prompts from a seed the generator never trained on (alternating one-
    and two-object prompts unless `n_objects` is given)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = n_objects or (1 + i % 2)
        scene = sample_scene(rng, k)
        out.append(Prompt(describe(scene, rng).text, scene))
    return out


def judge_tensor(image, prompt: str):
    """The oracle's judgement of a (3, H, W) float image in [0, 1] (a pipeline's "pt" output)."""
    from PIL import Image

    from .oracle import judge

    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
    return judge(Image.fromarray(arr.astype("uint8")), prompt)


def generate_and_judge(
    pipe,
    prompts: list[str],
    *,
    seed: int = 0,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    batch: int = 25,
    desc: str | None = None,
) -> list[tuple]:
    """One image per prompt (prompt k seeded `seed + k`), each judged by the oracle.

    Returns (image (3, H, W) in [0, 1], prompt, `OracleJudgement`) triples in prompt order."""
    import torch
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(prompts), batch), desc=desc, disable=desc is None):
        chunk = list(prompts[i : i + batch])
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        with torch.no_grad():
            imgs = pipe(
                chunk,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                output_type="pt",
            ).images
        out += [(im, p, judge_tensor(im, p)) for im, p in zip(imgs, chunk)]
    return out


def word_kind_accuracy(judgements) -> dict[str, float]:
    """Share of right words per word kind (color, shape, size, position) over judgements."""
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for j in judgements:
        for w in j.words:
            if w.kind is None or w.correct is None:
                continue
            total[w.kind] = total.get(w.kind, 0) + 1
            right[w.kind] = right.get(w.kind, 0) + int(w.correct)
    return {k: right[k] / total[k] for k in sorted(total)}


def lora_path(name: str, pipeline: str = PIPELINE_NAME) -> Path | None:
    """A shipped LoRA folder by short name (`<pipeline>-lora-<name>` under weights/), or None."""
    path = Path(__file__).parent / "weights" / f"{pipeline}-lora-{name}"
    return path if (path / "pytorch_lora_weights.safetensors").is_file() else None


def shipped_loras(pipeline: str = PIPELINE_NAME) -> list[str]:
    """Short names of the LoRAs shipped for `pipeline`."""
    prefix = f"{pipeline}-lora-"
    root = Path(__file__).parent / "weights"
    return sorted(
        p.name[len(prefix) :]
        for p in root.glob(prefix + "*")
        if lora_path(p.name[len(prefix) :], pipeline)
    )


def loop_verifier_path(name: str = PIPELINE_NAME) -> Path | None:
    """The pipeline's verifier card (`feedback.Verifier`: fitted on its labelled generated
    images for `LOOP_DETECTOR` at the loop eps), or None when it ships none."""
    path = Path(__file__).parent / "weights" / name / "verifier.json"
    return path if path.is_file() else None


def loop_threshold(name: str = PIPELINE_NAME, detector: str = LOOP_DETECTOR) -> float | None:
    """The stop-rule eps the pipeline's card calibrated for `detector` on generated images
    (None when the card has none for that detector)."""
    cal = loop_calibration(name, detector)
    return cal.get("threshold") if cal else None


def loop_calibration(name: str = PIPELINE_NAME, detector: str = LOOP_DETECTOR) -> dict | None:
    """The card's whole calibration of `detector` on the pipeline's generated images (eps,
    false alarms, recall), or None."""
    from generation.cards import PipelineCard

    card = PipelineCard.load(pipeline_path(name))
    return card.loop_thresholds.get(detector) if card is not None else None
