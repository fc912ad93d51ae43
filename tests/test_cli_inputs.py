"""The CLI's inputs refused in one line (exit 2) before any model loads: `--pipeline-arg`
checked against the pipeline's call, `--pipeline` on a folder that is no diffusers pipeline,
and `score` manifests (lines without an id are numbered; a manifest with no valid line)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_pipelines as tp

import generation.cli as cli
from feedback.errors import InputError, ModelLoadError
from generation.call_args import check_pipeline_args, fits, pipeline_class, type_name
from generation.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _boom(*a, **k):
    raise AssertionError("a model was loaded before the input was checked")


def _no_model_loads(monkeypatch):
    import feedback.cli.data as data

    monkeypatch.setattr(cli, "load_pipeline", _boom)
    monkeypatch.setattr(cli, "build_detector", _boom)
    monkeypatch.setattr(data, "build_detector", _boom)


def _one_line_error(code, capsys) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clip4dm: error: "), err
    return lines[0]


def _index_folder(folder: Path, class_name: str) -> Path:
    """A pipeline folder as far as the check reads it: its model_index.json only."""
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": class_name, "_diffusers_version": "0.42.1"})
    )
    return folder


@pytest.fixture
def flux_folder(tmp_path):
    return _index_folder(tmp_path / "flux", "FluxPipeline")


def _loop(command: str, pipeline, tmp_path, *extra: str) -> list[str]:
    if command == "generate":
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("a red circle\n")
        argv = ["generate", "--prompts", str(prompts)]
    else:
        argv = ["demo", "--prompts", "a red circle"]
    return argv + ["--out", str(tmp_path / "out"), "--pipeline", str(pipeline), *extra]


# 1. --pipeline-arg against the pipeline's call signature


@pytest.mark.parametrize("command", ["generate", "demo"])
def test_unknown_pipeline_arg_is_refused_naming_what_the_call_takes(
    command, flux_folder, tmp_path, capsys, monkeypatch
):
    _no_model_loads(monkeypatch)
    code = main(_loop(command, flux_folder, tmp_path, "--pipeline-arg", "foo=1"))
    line = _one_line_error(code, capsys)
    assert "--pipeline-arg foo=1: FluxPipeline's call takes no 'foo' (it takes: " in line
    assert "max_sequence_length" in line and "true_cfg_scale" in line
    assert "guidance_scale" not in line  # the loop's own (--guidance), not offered
    assert not (tmp_path / "out").exists()


def test_a_near_miss_is_named(flux_folder, tmp_path, capsys, monkeypatch):
    _no_model_loads(monkeypatch)
    code = main(_loop("demo", flux_folder, tmp_path, "--pipeline-arg", "max_seq_length=64"))
    assert "did you mean 'max_sequence_length'?" in _one_line_error(code, capsys)


@pytest.mark.parametrize(
    "arg, expect",
    [
        ("max_sequence_length=abc", "FluxPipeline's max_sequence_length takes int, got a string"),
        ("max_sequence_length=1.5", "max_sequence_length takes int, got a number"),
        ("true_cfg_scale=yes", "true_cfg_scale takes float, got a string"),
        ('sigmas=[1, "a"]', "sigmas takes list[float] | None, got an array"),
        ("joint_attention_kwargs=3", "joint_attention_kwargs takes dict[str, Any] | None"),
        ("latents=[1, 2]", "latents takes torch.FloatTensor | None"),
        ("negative_prompt=12", "quote it as JSON: negative_prompt='\"12\"'"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_type(
    arg, expect, flux_folder, tmp_path, capsys, monkeypatch
):
    _no_model_loads(monkeypatch)
    code = main(_loop("generate", flux_folder, tmp_path, "--pipeline-arg", arg))
    line = _one_line_error(code, capsys)
    assert f"--pipeline-arg {arg}: " in line and expect in line, line


def test_values_that_fit_reach_loading(flux_folder, tmp_path, capsys, monkeypatch):
    """An int for a float, null for anything, a string for `str | list[str]`: the check lets
    them through, and the command goes on to load the pipeline."""
    seen, checked = {}, cli.call_kwargs

    def loading(*a, **k):
        raise ModelLoadError("reached loading")

    monkeypatch.setattr(cli, "call_kwargs", lambda args: seen.setdefault("kw", checked(args)))
    monkeypatch.setattr(cli, "load_pipeline", loading)
    monkeypatch.setattr(cli, "build_detector", loading)
    argv = _loop("demo", flux_folder, tmp_path)
    argv += ["--pipeline-arg", "max_sequence_length=256", "--pipeline-arg", "true_cfg_scale=4"]
    argv += ["--pipeline-arg", "prompt_2=null", "--pipeline-arg", "negative_prompt=blurry"]
    line = _one_line_error(main(argv), capsys)
    assert "reached loading" in line
    assert seen["kw"] == {
        "max_sequence_length": 256,
        "true_cfg_scale": 4,
        "prompt_2": None,
        "negative_prompt": "blurry",
    }


def test_the_shipped_pipeline_is_checked_too(tmp_path, capsys, monkeypatch):
    _no_model_loads(monkeypatch)
    code = main(["demo", "--out", str(tmp_path / "out"), "--pipeline-arg", "foo=1"])
    assert "StableDiffusionPipeline's call takes no 'foo'" in _one_line_error(code, capsys)


def _cache_hub_index(cache: Path, repo: str, class_name: str) -> None:
    """A hub repo's model_index.json in a huggingface_hub cache, as a download leaves it."""
    commit = "0" * 40
    root = cache / ("models--" + repo.replace("/", "--"))
    _index_folder(root / "snapshots" / commit, class_name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_a_hub_id_is_checked_from_the_cache_only(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    _cache_hub_index(cache, "someone/flux-like", "FluxPipeline")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    _no_model_loads(monkeypatch)
    code = main(_loop("demo", "someone/flux-like", tmp_path, "--pipeline-arg", "foo=1"))
    assert "FluxPipeline's call takes no 'foo'" in _one_line_error(code, capsys)
    # Not in the cache: nothing is fetched for the check; loading speaks for itself.
    assert pipeline_class("someone/not-cached") is None

    def loading(*a, **k):
        raise ModelLoadError("reached loading")

    monkeypatch.setattr(cli, "load_pipeline", loading)
    monkeypatch.setattr(cli, "build_detector", loading)
    code = main(_loop("demo", "someone/not-cached", tmp_path, "--pipeline-arg", "foo=1"))
    assert _one_line_error(code, capsys) == "clip4dm: error: reached loading"


def test_an_index_naming_no_diffusers_class_is_not_checked(tmp_path):
    assert pipeline_class(str(_index_folder(tmp_path / "mine", "MyOwnPipeline"))) is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{ not json")
    assert pipeline_class(str(tmp_path / "broken")) is None


@pytest.mark.parametrize("family", tp.FAMILIES)
def test_every_familys_test_arguments_pass_the_check(family):
    import diffusers

    names = {
        "sd": "StableDiffusionPipeline",
        "sdxl": "StableDiffusionXLPipeline",
        "sd3": "StableDiffusion3Pipeline",
        "flux": "FluxPipeline",
        "pixart": "PixArtSigmaPipeline",
        "sana": "SanaPipeline",
    }
    kw = {k: v for k, v in tp.CALL[family].items() if k not in cli._OWN}
    assert check_pipeline_args(getattr(diffusers, names[family]), kw, own=cli._OWN) == kw


def test_json_arrays_become_tuples_where_the_call_takes_a_tuple():
    from diffusers import StableDiffusionXLPipeline as XL

    kw = check_pipeline_args(XL, {"original_size": [64, 64], "timesteps": [1, 2]})
    assert kw == {"original_size": (64, 64), "timesteps": [1, 2]}
    with pytest.raises(InputError, match=r"original_size takes tuple\[int, int\] \| None"):
        check_pipeline_args(XL, {"original_size": [64, 64, 3]})
    with pytest.raises(InputError, match="takes no 'callback_steps'"):  # a **kwargs catch-all
        check_pipeline_args(XL, {"callback_steps": 5})


def test_fits_is_loose_the_way_json_values_are():
    from typing import Any, Literal, Optional, Union

    assert fits(3, float) and not fits(True, float) and not fits(True, int)
    # typing's Optional/Union, as diffusers' annotations still use them
    assert fits(None, int) and fits("x", Optional[str]) and fits(2, Union[str, int])  # noqa: UP007, UP045
    assert fits([1, 2], list[int]) and not fits([1, "a"], list[int]) and not fits((1,), list)
    assert fits({"a": 1}, dict[str, Any]) and not fits([1], dict)
    assert fits("pil", Literal["pil", "np"]) and not fits("jpg", Literal["pil", "np"])
    assert fits([1, 2], tuple[int, ...]) and not fits([1, 2, 3], tuple[int, int])
    assert fits("anything", "SomeForwardRef")
    assert type_name(Optional[Union[int, list[str]]]) in (  # noqa: UP007, UP045
        "int | list[str] | None",
        "list[str] | int | None",  # typing caches Unions up to their arms' order
    )
    assert type_name(int | None) == "int | None"


# 2. --pipeline on a folder without model_index.json


@pytest.mark.parametrize("how", ["absolute", "relative", "with-pipeline-arg"])
def test_a_clip_folder_is_not_a_diffusers_pipeline_folder(
    how, tiny_hf_dir, tmp_path, capsys, monkeypatch
):
    folder = tmp_path / "clip"
    shutil.copytree(tiny_hf_dir, folder)
    name, extra = str(folder), []
    if how == "relative":
        monkeypatch.chdir(tmp_path)
        name = "clip"
    elif how == "with-pipeline-arg":
        extra = ["--pipeline-arg", "max_sequence_length=64"]
    _no_model_loads(monkeypatch)
    line = _one_line_error(main(_loop("demo", name, tmp_path, *extra)), capsys)
    assert f"--pipeline {name}: not a diffusers pipeline folder (no model_index.json)" in line
    assert "transformers CLIP model (a detector: give it to --model)" in line
    assert "offline" not in line and "cache" not in line


def test_load_pipeline_itself_refuses_a_folder_without_model_index(tiny_open_clip_dir):
    """What the app (which takes no --pipeline-arg) meets: load_pipeline says it too."""
    with pytest.raises(ModelLoadError, match=r"no model_index.json\); it holds an OpenCLIP"):
        cli.load_pipeline(str(tiny_open_clip_dir), "cpu")


def test_an_empty_folder_is_not_a_pipeline_folder_either(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = _one_line_error(main(_loop("generate", tmp_path / "empty", tmp_path)), capsys)
    assert line.endswith("not a diffusers pipeline folder (no model_index.json)")


# 3. score --data: lines without an id, and a manifest with no valid line


def _score(manifest, out, model) -> list[str]:
    return ["score", "--data", str(manifest), "--out", str(out), "--model", str(model)]


def test_score_numbers_lines_without_an_id_and_resumes(
    tiny_open_clip_dir, images, tmp_path, capsys
):
    img = tmp_path / "a.png"
    images[0][0].save(img)
    row = {"image": str(img), "caption": images[0][1]}
    manifest = tmp_path / "m.jsonl"
    lines = [json.dumps(row), "", json.dumps(row), json.dumps({"id": "named", **row})]
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.jsonl"
    assert main(_score(manifest, out, tiny_open_clip_dir)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 3 and summary["invalid"] == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == [1, 3, "named"]  # 1-based, blank lines counted
    assert all("words" in r for r in recs)
    assert main(_score(manifest, out, tiny_open_clip_dir)) == 0  # a rerun resumes by id
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["written"] == 0 and again["skipped"] == 3
    assert len(out.read_text().splitlines()) == 3


def test_a_numbered_line_colliding_with_an_id_is_named(tmp_path):
    from feedback.batch import read_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"image": "a.png", "caption": "x"})
        + "\n"
        + json.dumps({"id": 1, "image": "b.png", "caption": "y"})
        + "\n"
    )
    items, problems = read_manifest(manifest)
    assert [it["id"] for it in items] == [1]
    assert "m.jsonl:2: duplicate id '1' (first on line 1; line 1 has no id" in problems[0]


def test_score_help_says_how_lines_without_an_id_are_named(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a line without an id is numbered by its line number (1-based" in text


@pytest.mark.parametrize(
    "content, expect",
    [
        (
            '{"image": "a.png"}\n[1, 2]\n{oops\n',
            "no line of the manifest can be scored: {m}:1: missing caption "
            "(and 2 more refused lines)",
        ),
        ("\n  \n", "manifest holds no rows (every line is empty): {m}"),
    ],
)
def test_score_with_no_valid_line_exits_2_before_loading(
    content, expect, tmp_path, capsys, monkeypatch
):
    _no_model_loads(monkeypatch)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(content)
    out = tmp_path / "r.jsonl"
    line = _one_line_error(main(_score(manifest, out, "shapes-tiny")), capsys)
    assert line.endswith(expect.format(m=manifest)), line
    assert not out.exists()


def test_score_manifest_refuses_a_manifest_with_no_valid_line(tmp_path):
    from feedback.batch import score_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"caption": "a cat"}\n')
    with pytest.raises(InputError, match="m.jsonl:1: missing image"):
        score_manifest(None, manifest, tmp_path / "r.jsonl", progress=False)
    assert not (tmp_path / "r.jsonl").exists()


# 4. the real command line: one line on stderr, exit 2


@pytest.mark.slow
def test_the_console_command_prints_one_line(flux_folder, tmp_path):
    argv = _loop("demo", flux_folder, tmp_path, "--pipeline-arg", "max_sequence_length=abc")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "generation.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "clip4dm: error: --pipeline-arg max_sequence_length=abc: FluxPipeline's "
        "max_sequence_length takes int, got a string"
    ]
