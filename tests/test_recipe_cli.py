"""The recipes' command lines: flags from config fields, help from field docstrings,
`--config FILE` with flags overriding it, clear errors for bad files."""

from __future__ import annotations

import dataclasses
import json

import pytest

from recipes.cli import field_docs, parse_config
from recipes.finetune_ddpo import DDPOConfig
from recipes.finetune_reward_filtered import FilteredConfig
from shapesworld.build.generate_shapes_pool import PoolConfig
from shapesworld.build.train_shapes_clip import TrainConfig
from shapesworld.build.train_shapes_t2i import T2IConfig


def test_flags_in_both_spellings_and_bool_switches():
    cfg = parse_config(DDPOConfig, ["--output-dir", "a", "--clip_range", "0.5", "--resume"])
    assert (cfg.output_dir, cfg.clip_range, cfg.resume) == ("a", 0.5, True)
    assert parse_config(DDPOConfig, []) == DDPOConfig()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_sets_fields_and_flags_override_it(tmp_path, suffix):
    f = tmp_path / ("c" + suffix)
    values = {"rounds": 3, "lr": 0.5, "output-dir": "from-file"}
    if suffix == ".json":
        f.write_text(json.dumps(values))
    else:
        f.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    cfg = parse_config(DDPOConfig, ["--config", str(f), "--lr", "0.1"])
    assert (cfg.rounds, cfg.lr, cfg.output_dir) == (3, 0.1, "from-file")


def _fails(capsys, cls, argv) -> str:
    with pytest.raises(SystemExit) as e:
        parse_config(cls, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err, err
    return err


def test_bad_config_files_name_the_problem(tmp_path, capsys):
    assert "no such file" in _fails(capsys, DDPOConfig, ["--config", str(tmp_path / "no.json")])
    bad = tmp_path / "bad.json"
    bad.write_text('{"rounds": 3, "learning_rate": 1}')
    assert "unknown field(s) ['learning_rate']" in _fails(
        capsys, DDPOConfig, ["--config", str(bad)]
    )
    bad.write_text("{not json")
    assert "not valid" in _fails(capsys, DDPOConfig, ["--config", str(bad)])


@pytest.mark.parametrize(
    "cls, argv, field",
    [
        (DDPOConfig, ["--rounds", "0"], "rounds (--rounds) must be an integer >= 1, got 0"),
        (DDPOConfig, ["--lr", "-1"], "lr (--lr) must be a number > 0"),
        (DDPOConfig, ["--lr", "nan"], "lr (--lr) must be a number > 0, got nan"),
        (DDPOConfig, ["--eta", "0"], "eta (--eta) must be a number > 0"),
        (DDPOConfig, ["--caption-dropout", "1"], "caption_dropout (--caption-dropout)"),
        (FilteredConfig, ["--keep-fraction", "1.5"], "keep_fraction (--keep-fraction)"),
        (TrainConfig, ["--degradation-p", "2"], "degradation_p (--degradation-p)"),
        (TrainConfig, ["--batch-size", "0"], "batch_size (--batch-size)"),
        (T2IConfig, ["--ema-decay", "1"], "ema_decay (--ema-decay)"),
        (PoolConfig, ["--parts", "-2"], "parts (--parts)"),
    ],
)
def test_numeric_fields_out_of_range_are_one_line_naming_the_field(cls, argv, field, capsys):
    assert field in _fails(capsys, cls, argv)


def test_out_of_range_in_a_config_file_or_python_too(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text('{"rounds": -1}')
    assert "rounds (--rounds)" in _fails(capsys, DDPOConfig, ["--config", str(f)])
    with pytest.raises(ValueError, match="steps_per_round"):
        DDPOConfig(steps_per_round=0)


def test_no_abbreviations_and_every_default_in_help(capsys):
    # "--prompts" was "ambiguous" (--prompts_per_round and --prompts-per-round); now it is
    # simply not a flag, and the full spellings work
    err = _fails(capsys, DDPOConfig, ["--prompts", "4"])
    assert "unrecognized arguments: --prompts" in err or "--prompts" in err
    assert parse_config(DDPOConfig, ["--prompts-per-round", "4"]).prompts_per_round == 4
    with pytest.raises(SystemExit):
        parse_config(DDPOConfig, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(DDPOConfig):
        # (the field's default: an empty --detector is resolved after parsing)
        assert f"(default: {f.default})" in out, f.name


def test_help_shows_field_docstrings_inherited_too(capsys):
    docs = field_docs(DDPOConfig)
    assert "LoRA rank" in docs["rank"]  # from the base RoundsConfig
    assert "PPO ratio clip" in docs["clip_range"]
    with pytest.raises(SystemExit):
        parse_config(DDPOConfig, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "PPO ratio clip" in out and "--config" in out


def test_dict_fields_take_json():
    assert parse_config(TrainConfig, ["--model-cfg", '{"embed_dim": 8}']).model_cfg == {
        "embed_dim": 8
    }
    assert parse_config(TrainConfig, []).model_cfg == TrainConfig().model_cfg


def test_a_recipe_error_is_one_line_and_exit_2_alone_and_under_accelerate(tmp_path):
    """Run alone: our line, exit 2. Under `accelerate launch -q`: our line, accelerate's exit
    1, no traceback (without -q accelerate adds its CalledProcessError traceback: documented)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = str(root / "recipes" / "finetune_reward_filtered.py")
    env = {**os.environ, "PYTHONPATH": str(root)}
    alone = subprocess.run(
        [sys.executable, script, "--rounds", "0"], capture_output=True, text=True, env=env
    )
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines() == [
        "finetune_reward_filtered.py: error: rounds (--rounds) must be an integer >= 1, got 0"
    ]
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "-q", "--cpu"]
        + ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no"]
        + ["--dynamo_backend", "no", script, "--rounds", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert launched.returncode == 1
    assert "rounds (--rounds) must be an integer >= 1" in launched.stderr
    assert "Traceback" not in launched.stderr, launched.stderr[-2000:]
