"""The recipes' command lines: flags from config fields, help from field docstrings,
`--config FILE` with flags overriding it, clear errors for bad files."""

from __future__ import annotations

import json

import pytest

from recipes.cli import field_docs, parse_config
from recipes.finetune_ddpo import DDPOConfig
from recipes.train_shapes_clip import TrainConfig


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


def test_bad_config_files_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        parse_config(DDPOConfig, ["--config", str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.json"
    bad.write_text('{"rounds": 3, "learning_rate": 1}')
    with pytest.raises(SystemExit, match="unknown field.*learning_rate"):
        parse_config(DDPOConfig, ["--config", str(bad)])
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="not valid"):
        parse_config(DDPOConfig, ["--config", str(bad)])


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
