"""What each loop fix buys over a fresh sample on the shipped `shapes-sd-tiny`, judged by the
pixel oracle, written into the loop's verifier card so the loop applies a fix only where it
pays (`generation.fixes`, `generation.verifier.gate`).

    python -m shapesworld.build.measure_fixes --output-dir runs/fixes --prompts 300 \
        --verifier shapesworld/weights/shapes-sd-tiny/verifier.json

For each calibration prompt (`CALIBRATION_SEED`, half one-object, half two-object; image
seeds from `--seed`, which no benchmark uses) and each fix strategy: the loop makes its plain
image (seed s); when the detector flags a word in it, the strategy's fix makes round 1 (seed
s + 1, `reseed`) and a fresh sample is made at the same seed s + 1 with the plain prompt. The
oracle judges both. One JSON line per trial in `fixes.jsonl`, written as it goes
(`{"group", "strategy", "fix", "kind", "fixed_right", "fresh_right", "prompt"}`; `kind`: the
flagged word's, `generation.verifier.flagged_kind`), so a killed run resumes; then
`generation.fixes.fit_fix_gains` gives each fix's gain per kind with a bootstrap interval, written
into `--verifier` when given. With your own generator, label such pairs yourself and run
`clip4dm calibrate ... --verifier CARD --fixes trials.jsonl`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from generation.finetune.ranges import COUNT, NONNEG, NONNEG_INT, check_ranges
from recipes.cli import parse_config, run_recipe
from shapesworld.build.label_loop_pool import calibration_prompts
from shapesworld.pipelines import GUIDANCE, LOOP_DETECTOR, PIPELINE_NAME, STEPS, judge_tensor


@dataclass
class MeasureFixesConfig:
    output_dir: str = "runs/fixes"
    pipeline: str = PIPELINE_NAME
    detector: str = LOOP_DETECTOR
    verifier: str | None = None
    """Card to write the gains into (its eps is the detector's); None: only print them."""
    prompts: int = 300
    """Calibration prompts, half one-object and half two-object."""
    strategies: list[str] = field(
        default_factory=lambda: ["reweight", "phrase_guidance", "attend_and_excite"]
    )
    steps: int = STEPS
    guidance: float = GUIDANCE
    seed: int = 8_000_000
    """Base image seed (prompt i: seed + 1000 i, + 1 for round 1 and the fresh sample)."""
    threads: int = 2

    RANGES: ClassVar[dict] = {
        "prompts": COUNT,
        "steps": COUNT,
        "guidance": NONNEG,
        "seed": NONNEG_INT,
        "threads": COUNT,
    }

    def __post_init__(self):
        check_ranges(self)
        from generation.strategies import STRATEGIES

        bad = [s for s in self.strategies if s not in STRATEGIES or s in ("best_of_n", "resample")]
        if bad or not self.strategies:
            fixes = [s for s in STRATEGIES if s not in ("best_of_n", "resample")]
            raise ValueError(f"strategies must be fix strategies among {fixes}, got {bad}")


def _done(path: Path) -> tuple[set, list[dict]]:
    keys, rows = set(), []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
                keys.add((r["group"], r["strategy"]))
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a kill: that trial is made again
            if r.get("fix") is not None:
                rows.append(r)
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            with open(path, "a") as f:
                f.write("\n")
    return keys, rows


def main(cfg: MeasureFixesConfig) -> dict:
    from feedback import MisalignmentDetector, Verifier
    from generation import FeedbackPipeline, LoopConfig
    from generation.fixes import fit_fix_gains, fix_gains, set_fix_gains
    from generation.verifier import flagged_kind
    from shapesworld.pipelines import load_pipeline, loop_threshold

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = Verifier.load(cfg.verifier) if cfg.verifier else None
    eps = card.threshold if card is not None and card.threshold is not None else None
    eps = eps if eps is not None else loop_threshold(cfg.pipeline, cfg.detector)
    det = MisalignmentDetector.from_pretrained(cfg.detector, threshold=eps)
    pipe = load_pipeline(cfg.pipeline)
    gen = dict(num_inference_steps=cfg.steps, guidance_scale=cfg.guidance, output_type="pt")
    trials = out / "fixes.jsonl"
    keys, rows = _done(trials)
    prompts = calibration_prompts(cfg.prompts)

    def loop(strategy: str):
        # two rounds, no early stop, no gate: round 1 is the fix (or a fresh sample)
        lc = LoopConfig(
            strategy=strategy, max_images=2, max_rounds=2, stop_when_aligned=False, gate_fixes=False
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="no verifier card")
            return FeedbackPipeline(pipe, det, lc, verifier=card)

    fresh_loop = loop("resample")
    fix_loops = {s: loop(s) for s in cfg.strategies}
    with open(trials, "a", encoding="utf-8") as f:
        for i, prompt in enumerate(tqdm(prompts, desc="fix vs fresh", unit="prompt")):
            todo = [s for s in cfg.strategies if (i, s) not in keys]
            if not todo:
                continue
            fresh_loop.config.seed = cfg.seed + 1000 * i
            fresh = fresh_loop(prompt, **gen).history[0]
            kind = flagged_kind(fresh.rounds[0].reports[0], prompt)
            fresh_right = bool(judge_tensor(fresh.rounds[1].images[0], prompt).all_correct)
            for s in todo:
                row = {"group": i, "strategy": s, "prompt": prompt, "kind": kind, "fix": None}
                if kind is not None:  # nothing flagged: the fix has nothing to act on
                    fb = fix_loops[s]
                    fb.config.seed = cfg.seed + 1000 * i
                    h = fb(prompt, **gen).history[0]
                    if h.rounds[1].fix != "resample":  # a fix was made (not a no-op)
                        fixed = judge_tensor(h.rounds[1].images[0], prompt).all_correct
                        row.update(
                            fix=h.rounds[1].fix,
                            fixed_right=bool(fixed),
                            fresh_right=fresh_right,
                        )
                        rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
    # phrase_guidance on a one-phrase prompt re-weights: the same trial as reweight's, once
    unique = list({(r["group"], r["fix"]): r for r in rows}.values())
    gains = fit_fix_gains(unique) if unique else {}
    if card is not None:
        set_fix_gains(card, {**fix_gains(card), **gains})  # fixes not measured here keep theirs
        card.save(cfg.verifier)
    (out / "gains.json").write_text(json.dumps(gains, indent=2))
    return {"trials": len(unique), "gains": gains, "card": cfg.verifier}


def parse_args(argv=None) -> MeasureFixesConfig:
    return parse_config(MeasureFixesConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args)
