"""Fine-tuning on your prompts: the recipes' `--prompts FILE`, `--validation-prompts FILE`,
`--anchors DIR` (imagefolder metadata.jsonl and/or .txt captions), `--candidates FILE`,
`--detector NAME|DIR` and `--eps`, and the readers behind them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FILTERED = ROOT / "recipes" / "finetune_reward_filtered.py"
EVERYDAY = [
    "a photo of a dog on a beach",
    "a red car parked next to a tree",
    "(a cat:1.3) sleeping on a sofa",
    "two people riding bicycles in the rain",
]
TINY = ["--prompts-per-round", "2", "--images-per-prompt", "2", "--steps-per-round", "2"]
TINY += ["--batch-size", "2", "--sample-steps", "2", "--threads", "1"]


def _prompt_file(folder: Path, prompts=EVERYDAY, name="prompts.txt") -> Path:
    f = folder / name
    f.write_text("\n" + "\n\n".join(prompts) + "\n  \n", encoding="utf-8")
    return f


def _anchor_folder(folder: Path) -> Path:
    """Two pairs listed in metadata.jsonl (one in a subfolder) and one with a .txt caption."""
    from PIL import Image

    folder.mkdir()
    (folder / "sub").mkdir()
    Image.new("RGB", (16, 16), "blue").save(folder / "sky.png")
    Image.new("RGB", (20, 12), "green").save(folder / "sub" / "grass.png")
    Image.new("RGB", (8, 8), "yellow").save(folder / "sun.png")
    (folder / "sun.txt").write_text("the sun in a clear sky\n")
    (folder / "metadata.jsonl").write_text(
        json.dumps({"file_name": "sky.png", "text": "a blue sky"})
        + "\n\n"
        + json.dumps({"file_name": "sub/grass.png", "text": "green grass in a park"})
        + "\n"
    )
    return folder


# --- readers ---------------------------------------------------------------------------------


def test_prompt_files_are_read_one_a_line_and_bad_ones_are_one_line(tmp_path):
    from generation.finetune.prompts import clean, read_prompts

    assert read_prompts(_prompt_file(tmp_path)) == EVERYDAY
    assert clean("(a cat:1.3) sleeping on a sofa") == "a cat sleeping on a sofa"
    with pytest.raises(ValueError, match=r"^--prompts: no such file: .*nope.txt$"):
        read_prompts(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    with pytest.raises(ValueError, match="--validation-prompts .*empty.txt: no prompts"):
        read_prompts(tmp_path / "empty.txt", "--validation-prompts")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 text"):
        read_prompts(tmp_path / "latin1.txt")
    (tmp_path / "utf8.txt").write_text("un café au lait\n", encoding="utf-8")
    assert read_prompts(tmp_path / "utf8.txt") == ["un café au lait"]


def test_prompts_cycle_deterministically_through_the_file_across_processes():
    from generation.finetune.prompts import cycling_prompts, split_validation

    prompts = [f"prompt {i}" for i in range(10)]
    cyc = cycling_prompts(prompts, 3, seed=0)
    assert cyc(2, 1, 2) == cycling_prompts(prompts, 3, seed=0)(2, 1, 2)  # same draw again
    assert cyc(0, 0) != cycling_prompts(prompts, 3, seed=1)(0, 0)
    # one stream over rounds and processes: every pass uses each prompt exactly once
    stream = [p for r in range(5) for k in range(2) for p in cyc(r, k, 2)]
    assert len(stream) == 30
    for e in range(3):
        assert sorted(stream[10 * e : 10 * (e + 1)]) == sorted(prompts)
    train, val = split_validation(prompts, 2, seed=0)
    assert len(val) == 2 and sorted(train + val) == sorted(prompts)
    assert split_validation(prompts, 2, seed=0) == (train, val)
    assert split_validation(prompts, 0) == (prompts, [])
    with pytest.raises(ValueError, match="--validation-prompts"):
        split_validation(prompts[:1], 1)


def test_anchor_folders_read_imagefolder_metadata_and_txt_captions(tmp_path):
    from generation.finetune.anchors import folder_anchors, read_anchor_pairs

    folder = _anchor_folder(tmp_path / "pairs")
    pairs = read_anchor_pairs(folder, "--anchors")
    assert sorted(t for _, t in pairs) == [
        "a blue sky",
        "green grass in a park",
        "the sun in a clear sky",
    ]
    source = folder_anchors(folder, (32, 32), "--anchors")
    images, caps = source(6, np.random.default_rng(0))
    assert images.shape == (6, 3, 32, 32) and 0 <= float(images.min()) <= float(images.max()) <= 1
    assert set(caps) <= {t for _, t in pairs}

    def bad(meta: str, match: str):
        (folder / "metadata.jsonl").write_text(meta)
        with pytest.raises(ValueError, match=match):
            read_anchor_pairs(folder, "--anchors")

    bad("{not json\n", "^--anchors: metadata.jsonl line 1 is not JSON")
    bad('{"file_name": "sky.png"}\n', 'line 1 needs "file_name" and "text"')
    bad('\n{"file_name": "gone.png", "text": "x"}\n', "line 2: no such file gone.png")
    bad('{"file_name": "sky.png", "text": " "}\n', "line 1: empty text")
    bad("", "sky.png has no caption file sky.txt")  # not listed, no .txt beside it
    with pytest.raises(ValueError, match="^--anchors: no such folder"):
        read_anchor_pairs(tmp_path / "nope", "--anchors")


def test_candidate_files_are_checked_in_one_line(tmp_path):
    from generation.finetune.relabel import read_candidates

    f = tmp_path / "c.json"
    f.write_text(json.dumps({"color": ["Red", "blue", "red"], "animal": ["dog", "cat"]}))
    assert read_candidates(f) == {"color": ["red", "blue"], "animal": ["dog", "cat"]}
    with pytest.raises(ValueError, match="^--candidates: no such file"):
        read_candidates(tmp_path / "no.json")
    for content, match in [
        ("{oops", "not valid JSON"),
        ("[1, 2]", "expected a non-empty JSON object"),
        ("{}", "expected a non-empty JSON object"),
        ('{"color": "red"}', "'color' must be a list of words"),
        ('{"color": ["red"]}', "'color' needs at least two words"),
        ('{"animal": ["dog", "fire truck"]}', "single words, got 'fire truck'"),
    ]:
        f.write_text(content)
        with pytest.raises(ValueError, match=match):
            read_candidates(f)


# --- the options -----------------------------------------------------------------------------


def _fails(capsys, cls, argv) -> str:
    from recipes.cli import parse_config

    with pytest.raises(SystemExit) as e:
        parse_config(cls, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err, err
    return err


def test_every_recipe_takes_the_new_options(tmp_path, capsys):
    from recipes.cli import parse_config
    from recipes.finetune_anchors_only import AnchorsOnlyConfig
    from recipes.finetune_ddpo import DDPOConfig
    from recipes.finetune_grpo import GRPOConfig
    from recipes.finetune_loop_distill import DistillConfig
    from recipes.finetune_relabel import RelabelConfig
    from recipes.finetune_reward_filtered import FilteredConfig

    prompts = _prompt_file(tmp_path)
    cands = tmp_path / "c.json"
    cands.write_text('{"animal": ["dog", "cat"]}')
    common = ["--prompts", str(prompts), "--validation-prompts", str(prompts)]
    common += ["--detector", "ViT-B-32", "--eps", "-5e-5", "--anchors", str(tmp_path)]
    for cls in (FilteredConfig, DDPOConfig, GRPOConfig, DistillConfig, AnchorsOnlyConfig):
        cfg = parse_config(cls, common)
        assert (cfg.prompts, cfg.eps, cfg.detector) == (str(prompts), -5e-5, "ViT-B-32")
        assert cfg.anchor_folder == (str(tmp_path), "--anchors")
        mod = sys.modules[cls.__module__]
        # (the policy objectives of DDPO / GRPO learn from their samples alone: no anchors)
        policy = cls in (DDPOConfig, GRPOConfig)
        for flag in ("--prompts", "--detector", "--eps", *([] if policy else ["--anchors"])):
            assert flag in mod.__doc__, (cls.__name__, flag)
    cfg = parse_config(RelabelConfig, [*common, "--candidates", str(cands)])
    assert cfg.candidates == str(cands)
    assert "--candidates" in sys.modules[RelabelConfig.__module__].__doc__
    # ShapesWorld stays the default when nothing is named
    assert parse_config(FilteredConfig, []) == FilteredConfig()
    assert FilteredConfig().prompts == "" and FilteredConfig().eps is None

    missing = str(tmp_path / "none.txt")
    assert "--prompts: no such file:" in _fails(capsys, FilteredConfig, ["--prompts", missing])
    (tmp_path / "empty.txt").write_text("\n")
    assert "no prompts" in _fails(capsys, DDPOConfig, ["--prompts", str(tmp_path / "empty.txt")])
    err = _fails(capsys, RelabelConfig, ["--prompts", str(prompts)])
    assert "--candidates FILE" in err  # ShapesWorld's words do not go with your prompts
    err = _fails(capsys, RelabelConfig, ["--candidates", str(tmp_path / "none.json")])
    assert "--candidates: no such file" in err
    assert "--validation-prompts needs --prompts" in _fails(
        capsys, FilteredConfig, ["--validation-prompts", str(prompts)]
    )


def test_eps_comes_from_the_flag_then_the_trained_pipelines_card(tmp_path, tiny_open_clip_dir):
    from generation.finetune import card_eps, load_detector
    from recipes.wiring import pipeline_folder
    from shapesworld.pipelines import loop_threshold

    # the shipped pipeline's card (its name resolved by the recipes), for the detector it
    # calibrated
    shipped = pipeline_folder("shapes-sd-tiny")
    assert pipeline_folder(None) == shipped and pipeline_folder("x/y") == "x/y"
    assert card_eps("shapes-tiny-gen", shipped) == loop_threshold(
        "shapes-sd-tiny", "shapes-tiny-gen"
    )
    # a detector the card knows nothing of, a hub id, a folder without a card: none
    assert card_eps(str(tiny_open_clip_dir), shipped) is None
    assert card_eps("ViT-B-32", None) is None
    assert card_eps("ViT-B-32", "someone/sd-model") is None
    assert card_eps("ViT-B-32", str(tmp_path)) is None
    # a user's pipeline folder with a card calibrated for their detector
    (tmp_path / "model_card.json").write_text(
        json.dumps({"loop_thresholds": {"ViT-B-32": {"threshold": -3e-4}}})
    )
    assert card_eps("ViT-B-32", str(tmp_path)) == -3e-4
    det = load_detector(str(tiny_open_clip_dir), "cpu", eps=-1e-3)
    assert det.config.threshold == -1e-3
    det = load_detector(str(tiny_open_clip_dir), "cpu", pipeline=str(tmp_path))
    assert det.config.threshold == -5e-5  # the paper's default: no card for this detector


def test_your_prompts_bring_the_real_default_clip_and_offline_it_is_one_line(tmp_path):
    """With --prompts and no --detector the recipes use `DEFAULT_MODEL` (ShapesWorld's
    detector stays the default with ShapesWorld prompts only); offline, where it is not
    cached, loading it fails in one line naming a detector to pass instead."""
    from feedback import DEFAULT_MODEL
    from recipes.finetune_ddpo import DDPOConfig
    from recipes.finetune_loop_distill import DistillConfig
    from recipes.finetune_reward_filtered import FilteredConfig
    from recipes.wiring import SHAPES_DETECTOR

    prompts = str(_prompt_file(tmp_path))
    for cls in (FilteredConfig, DDPOConfig, DistillConfig):
        assert cls().detector == SHAPES_DETECTOR == "shapes-tiny-gen"
        assert cls(prompts=prompts).detector == DEFAULT_MODEL
        assert cls(prompts=prompts, detector="ViT-B-32").detector == "ViT-B-32"
    cmd = [sys.executable, "-c"]
    cmd += [
        "import sys; from recipes.cli import run_recipe; "
        "from recipes.finetune_reward_filtered import FilteredConfig; "
        "from recipes.wiring import recipe_detector; "
        "run_recipe(lambda c: recipe_detector(c, 'cpu'), "
        f"lambda: FilteredConfig(prompts={prompts!r}))"
    ]
    # an empty Hugging Face cache, offline: the default CLIP cannot load
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert f"--detector {DEFAULT_MODEL} (the default with --prompts) does not load" in line
    assert "--detector shapes-tiny-gen" in line


# --- one round on your prompts and anchors ---------------------------------------------------


@pytest.mark.slow
def test_a_round_on_your_prompts_and_anchors(tmp_path, tiny_open_clip_dir):
    """reward-filtered, one round on the tiny pipeline with a local detector: the round drew
    the file's prompts (no ShapesWorld prompt) and mixed in the folder's anchor pairs."""
    out = tmp_path / "run"
    anchors = _anchor_folder(tmp_path / "pairs")
    cmd = [sys.executable, str(FILTERED), "--output-dir", str(out), "--rounds", "1", *TINY]
    cmd += ["--prompts", str(_prompt_file(tmp_path)), "--anchors", str(anchors)]
    cmd += ["--detector", str(tiny_open_clip_dir), "--eps", "-5e-5"]
    cmd += ["--anchor-fraction", "0.5", "--keep-fraction", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    clean = [p.replace("(a cat:1.3)", "a cat") for p in EVERYDAY]  # weight syntax stripped
    assert len(rec["prompts"]) == 2 and set(rec["prompts"]) <= set(clean)
    assert rec["generated"] == 4 and rec["kept"] >= 1
    assert rec["anchors"] >= 1 and set(rec["anchor_captions"]) <= {
        "a blue sky",
        "green grass in a park",
        "the sun in a clear sky",
    }
    saved = json.loads((out / "config.json").read_text())
    assert saved["prompts"].endswith("prompts.txt") and saved["eps"] == -5e-5
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
def test_the_anchors_only_control_reads_your_anchor_folder(tmp_path):
    out = tmp_path / "run"
    anchors = _anchor_folder(tmp_path / "pairs")
    cmd = [sys.executable, str(ROOT / "recipes" / "finetune_anchors_only.py")]
    cmd += ["--output-dir", str(out), "--rounds", "1", *TINY, "--anchors-per-round", "3"]
    cmd += ["--prompts", str(_prompt_file(tmp_path))]
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert bad.returncode == 2 and "needs --anchors DIR" in bad.stderr
    proc = subprocess.run(
        [*cmd, "--anchors", str(anchors)], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert (rec["kept"], rec["generated"]) == (3, 0)
    assert set(rec["prompts"]) <= {p.replace("(a cat:1.3)", "a cat") for p in EVERYDAY}
