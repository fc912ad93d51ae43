"""`clip4dm demo` (the README's main job) on the shipped models, its HTML report opened in a
real headless Chromium, and `clip4dm generate` resuming and sharding across two ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from generation.cli import main
from shapesworld.pipelines import LOOP_DETECTOR, pipeline_path, prompt_set


def test_shipped_pipeline_loads_offline_with_stock_diffusers():
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    files = sorted(pipeline_path().rglob("*.safetensors"))
    assert len(files) == 3  # unet, vae, text encoder: fp16 on disk, small
    for f in files:
        with safe_open(f, "pt") as st:
            assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.float16}
    assert sum(f.stat().st_size for f in files) < 30e6
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path(), local_files_only=True)
    assert pipe.unet.dtype == torch.float32  # upcast on load
    out = pipe("a red circle", num_inference_steps=2, output_type="pt")
    assert out.images.shape == (1, 3, 32, 32)


@pytest.mark.slow
def test_demo_writes_a_report_a_browser_renders(tmp_path, capsys, chromium_path):
    out = tmp_path / "demo"
    prompts = [p.text for p in prompt_set(2)]
    # most-negative mode flags one word per image, so the report must highlight words
    code = main(
        ["demo", "--out", str(out), "--budget", "2", "--steps", "10", "--mode", "most-negative"]
        + ["--prompts", *prompts]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "oracle" in printed
    assert {"report.html", "grid.png", "results.jsonl"} <= {p.name for p in out.iterdir()}
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    assert all(r["num_images"] == 2 for r in rows)

    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto((out / "report.html").as_uri())
        flagged = page.locator("mark.flag").all_inner_texts()
        assert flagged, "no highlighted words in the DOM"
        words = {w for p in prompts for w in p.split()}
        assert set(flagged) <= words
        assert page.locator(".card img").count() == 4
        # every inlined image decoded (naturalWidth > 0)
        widths = page.eval_on_selector_all(".card img", "els => els.map(e => e.naturalWidth)")
        assert all(w == 128 for w in widths)
        shot = tmp_path / "shot.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100, "screenshot is blank"
    assert sum(1 for c in img.histogram() if c) > 20


@pytest.mark.slow
def test_generate_resumes_and_shards_across_two_ranks(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(p.text for p in prompt_set(6)) + "\n")
    out = tmp_path / "gen"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["generate", "--pipeline", "shapes-sd-tiny", "--prompts", str(prompts)]
    base += ["--out", str(out), "--budget", "2", "--steps", "5", "--strategy", "best_of_n"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "generation.cli", *base]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summaries = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert sorted(s["process_index"] for s in summaries) == [0, 1]
    assert all(s["num_processes"] == 2 and s["written"] == 3 for s in summaries)
    files = sorted(p.name for p in out.glob("results-*.jsonl"))
    assert files == ["results-0-of-2.jsonl", "results-1-of-2.jsonl"]
    idx = sorted(
        json.loads(line)["index"] for f in out.glob("results-*.jsonl") for line in f.open()
    )
    assert idx == list(range(6))
    assert len(list((out / "images").glob("?????.png"))) == 6
    # rerun: everything is done, nothing is written again
    assert main(base) == 0
    assert sum(1 for f in out.glob("results-*.jsonl") for _ in f.open()) == 6


def test_generate_resumes_after_a_kill(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    texts = [p.text for p in prompt_set(3)]
    prompts.write_text("\n".join(texts) + "\n")
    out = tmp_path / "gen"
    out.mkdir()
    # a previous run finished prompt 1 and was killed while writing prompt 2's line
    (out / "results.jsonl").write_text(json.dumps({"index": 1}) + '\n{"index": 2, "pro')
    args = ["generate", "--pipeline", "shapes-sd-tiny", "--prompts", str(prompts)]
    args += ["--out", str(out), "--budget", "1"]
    assert main(args + ["--steps", "3", "--strategy", "best_of_n"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped_done"] == 1 and summary["written"] == 2
    lines = (out / "results.jsonl").read_text().splitlines()
    done = [json.loads(x)["index"] for x in lines if x.endswith("}")]
    assert sorted(done) == [0, 1, 2]


def test_generate_rejects_bad_prompt_files(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    gen = ["generate", "--pipeline", "shapes-sd-tiny"]
    assert main(gen + ["--prompts", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "holds no prompts" in capsys.readouterr().err
    assert main(gen + ["--prompts", str(tmp_path / "nope.txt"), "--out", "o"]) == 2
    assert "not found" in capsys.readouterr().err


def test_demo_names_a_missing_pipeline(tmp_path, capsys):
    code = main(["demo", "--pipeline", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert code == 2
    assert "pipeline folder not found" in capsys.readouterr().err


def _no_model_loads(monkeypatch):
    import generation.cli as cli

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(cli, "load_pipeline", boom)
    monkeypatch.setattr(cli, "build_detector", boom)


def test_demo_refuses_an_empty_prompt_before_loading_and_writes_nothing(
    tmp_path, capsys, monkeypatch
):
    _no_model_loads(monkeypatch)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--prompts", "a red circle", "  "]) == 2
    err = capsys.readouterr().err
    assert "--prompts: prompt 2 is empty" in err and "Traceback" not in err
    assert not out.exists()


def test_out_below_a_file_is_one_line_before_loading(tmp_path, capsys, monkeypatch):
    _no_model_loads(monkeypatch)
    f = tmp_path / "file.txt"
    f.write_text("x")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    for cmd in (
        ["generate", "--pipeline", "shapes-sd-tiny", "--prompts", str(prompts)]
        + ["--out", str(f / "sub")],
        ["generate", "--pipeline", "shapes-sd-tiny", "--prompts", str(prompts), "--out", str(f)],
        ["demo", "--out", str(f / "sub")],
    ):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out" in err and str(f) in err, err


def test_generate_names_undecodable_and_empty_lines_and_runs_the_rest(tmp_path, capsys):
    texts = [p.text for p in prompt_set(2)]
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(
        texts[0].encode()
        + b"\n\n"
        + "caf\u00e9 rouge".encode("latin-1")
        + b"\n"
        + texts[1].encode()
        + b"\n(( ))\n"  # only weight syntax: nothing to generate
    )
    out = tmp_path / "gen"
    args = ["generate", "--pipeline", "shapes-sd-tiny", "--prompts", str(prompts)]
    args += ["--out", str(out), "--budget", "1"]
    assert main(args + ["--steps", "2"]) == 0
    cap = capsys.readouterr()
    assert "line 3 not UTF-8 text; skipped" in cap.err
    assert "skipped 1 empty line(s) (2)" in cap.err
    assert "skipped line(s) 5: empty once the weight syntax is removed" in cap.err
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["prompts"] == 2 and summary["written"] == 2
    # one process: results.jsonl, as demo writes; results keyed by line
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["results.jsonl"]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["line"], r["prompt"]) for r in rows] == [(1, texts[0]), (4, texts[1])]
    assert sorted(p.name for p in (out / "images").glob("?????.png")) == ["00000.png", "00003.png"]


def test_a_long_prompt_gives_one_line_of_ours_only(tmp_path, capfd):
    long = " ".join(["a small red circle to the left of a large blue square"] * 50)
    prompts = tmp_path / "p.txt"
    prompts.write_text(long + "\n")
    args = ["generate", "--pipeline", "shapes-sd-tiny", "--prompts", str(prompts)]
    args += ["--out", str(tmp_path / "o"), "--budget", "1", "--model", LOOP_DETECTOR]
    assert main(args + ["--steps", "1"]) == 0
    import re

    # tqdm redraws its bar with "\r": split there too, and drop the bar's frames
    err = [x for x in re.split(r"[\r\n]", capfd.readouterr().err) if x.strip()]
    err = [re.sub(r"^clip4dm generate \[0-of-1\]:.*?\|[^|]*\|[^\]]*\]", "", x) for x in err]
    err = [x for x in err if x.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("clip4dm: warning: prompt too long"), err
    assert "clip reads 30 tokens" in err[0] and f"the detector ({LOOP_DETECTOR})" in err[0]


def test_oracle_judges_only_prompts_in_its_grammar():
    from shapesworld.oracle import in_grammar

    assert in_grammar("a small red circle to the left of a blue square.")
    assert in_grammar(prompt_set(1)[0].text)
    assert not in_grammar("a 🟥 square, big")
    assert not in_grammar("赤い円")
    assert not in_grammar("a red")  # no shape: nothing to judge


def test_cli_offers_every_loop_strategy():
    from generation import STRATEGIES
    from generation.cli import build_parser

    p = build_parser()
    for cmd in ("demo", "generate"):
        sub = p._subparsers._group_actions[0].choices[cmd]
        (action,) = [a for a in sub._actions if a.dest == "strategy"]
        assert set(action.choices) == set(STRATEGIES)


def test_loop_commands_default_to_the_generated_image_detector_and_its_loop_eps():
    """demo and app default to the testbed's loop detector; generate takes the detector the
    shipped pipeline's card names (and the eps it calibrated for it); the feedback commands
    default to the real CLIP."""
    from feedback.cli.options import DEFAULT_MODEL
    from generation.cli import _fb, build_parser, loop_detector_args
    from shapesworld.pipelines import load_pipeline, loop_threshold

    for cmd in (["demo"], ["app"]):
        assert build_parser().parse_args(cmd).model == LOOP_DETECTOR
    gen = ["generate", "--pipeline", "shapes-sd-tiny", "--prompts", "p.txt", "--out", "o"]
    args = loop_detector_args(build_parser().parse_args(gen))
    assert args.model == LOOP_DETECTOR
    assert args.threshold == loop_threshold(detector=LOOP_DETECTOR)
    assert build_parser().parse_args(["check", "x.png", "a cat"]).model == DEFAULT_MODEL
    args = build_parser().parse_args(["demo"])
    fb = _fb(args, load_pipeline())
    assert fb.detector.config.threshold == loop_threshold(detector=LOOP_DETECTOR)
    from generation import RECOMMENDED_STRATEGY

    assert fb.config.strategy.name == args.strategy == RECOMMENDED_STRATEGY


def test_the_detector_package_imports_nothing_from_generation_or_the_testbed():
    """Data flows one way: feedback -> generation. The `clip4dm` entry point is generation's
    CLI, which composes feedback's commands with the loop's."""
    import ast
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]

    def top_packages(f):  # the top-level packages each absolute import of `f` names
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                yield from (a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                yield (node.module or "").split(".")[0]

    for f in (root / "feedback").rglob("*.py"):
        names = set(top_packages(f))
        assert not names & {"generation", "shapesworld"}, f"{f.relative_to(root)} imports {names}"
    # the loop imports the testbed only where a shipped name is resolved (its CLI) and where
    # the app offers the testbed's examples
    for f in (root / "generation").rglob("*.py"):
        if "shapesworld" in set(top_packages(f)):
            assert f.name in ("cli.py", "app.py"), f"{f.relative_to(root)} imports shapesworld"
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["clip4dm"] == "generation.cli:main"
    from feedback.cli.main import build_parser as detector_parser

    def commands(p):
        return set(p._subparsers._group_actions[0].choices)

    assert commands(detector_parser()) == {"check", "score", "eval", "calibrate"}
    from generation.cli import build_parser

    assert commands(build_parser()) == {
        "check",
        "score",
        "eval",
        "calibrate",
        "demo",
        "generate",
        "app",
    }


def test_grid_png_labels_each_row_and_image(tmp_path):
    """grid.png stands alone: each row's prompt text on the left (flagged words in red), each
    image labelled with its round and seed, the kept one framed."""
    import torch
    from PIL import Image

    from feedback import MisalignmentReport, WordScore
    from generation.figures import write_grid
    from generation.outputs import PromptHistory, RoundRecord

    def history(prompt, flagged):
        words = []
        start = 0
        for w in prompt.split():
            words.append(
                WordScore(w, start, start + len(w), -0.01 if w == flagged else 0.01, w == flagged)
            )
            start += len(w) + 1
        rep = MisalignmentReport(prompt, words, 0.3, 0.75, -0.01, -0.01, False)
        rec = RoundRecord(
            0, "plain", torch.rand(2, 3, 8, 8), [rep, rep], [5, 6], [1.0] * 4, prompt, prompt
        )
        return PromptHistory(prompt, [rec], (0, 1), "max_images")

    path = write_grid(
        [history("a red circle left", "red"), history("a big blue cross", "big")],
        tmp_path / "grid.png",
        scale=4,
    )
    img = Image.open(path).convert("RGB")
    w, h = img.size
    assert w == 260 + 2 * (32 + 6) + 6 and h == 2 * (32 + 16 + 6) + 6
    text = img.crop((0, 0, 260, h))
    reds = [p for p in text.getdata() if p[0] > 150 and p[1] < 90 and p[2] < 90]
    darks = [p for p in text.getdata() if max(p) < 60]
    assert reds and darks  # flagged words in red, the others in black
    # the two rows' text differs (each row names its own prompt)
    row1, row2 = text.crop((0, 0, 260, 54)), text.crop((0, 54, 260, 108))
    assert list(row1.getdata()) != list(row2.getdata())
    # a label under each image
    under = img.crop((260, 32, 260 + 32, 48))
    assert any(max(p) < 200 for p in under.getdata())
    # the kept image (index 1) framed in green
    x = 260 + 38
    assert img.getpixel((x - 2, 20))[1] > 150 and img.getpixel((x - 2, 20))[0] < 80


README = Path(__file__).resolve().parents[1] / "README.md"
#: The docs pages that hold the loop's snippet and the card's figures (the README links them).
LOOP_DOC = README.parent / "docs" / "how-to" / "loop.md"
CARD_DOC = README.parent / "docs" / "how-to" / "verifier-cards.md"


def test_the_readme_loop_snippet_runs_as_written():
    """The loop page's first snippet (tests/test_docs.py runs every snippet; this one also
    checks what its comments promise)."""
    block = LOOP_DOC.read_text().split("```python")[1].split("```")[0]
    ns: dict = {}
    exec(compile(block, "docs/how-to/loop.md", "exec"), ns)  # noqa: S102 - the docs' example
    h = ns["h"]
    assert h.source == "a (red:1.2) circle left of a blue square"
    assert h.prompt == "a red circle left of a blue square"
    assert h.rounds[0].prompt_a1111.startswith("a (red:1.2) circle")
    assert len(h.rounds[0].p_right) == len(h.rounds[0].seeds)


def test_the_readme_quotes_the_cards_it_names():
    """One source of truth: the docs' loop eps and verifier figures are the shipped cards'."""
    import json

    from shapesworld.pipelines import loop_threshold, loop_verifier_path

    text = CARD_DOC.read_text()
    assert f"--threshold {loop_threshold()!r}" in text
    card = json.loads(loop_verifier_path().read_text())
    st = card["stats"]
    assert card["threshold"] == loop_threshold() and card["detector"] == LOOP_DETECTOR
    clip_sel, ver_sel = st["clip_score_selection_accuracy"], st["cv_selection_accuracy"]
    sel = f"({100 * clip_sel:.1f}% vs {100 * ver_sel:.1f}%"
    assert sel in text
    assert f"(AUC {st['cv_auc']:.2f} vs CLIPScore's {st['clip_score_auc']:.2f})" in text
    names = {"clip_score": "CLIPScore", "p_right": "P(right)", "region_score": "the region score"}
    assert f"it is {names[card['select_by']]}" in text
    # the fix-gain table: one row per fix the card measured, each cell the card's figures
    assert card["fix_gains"], "the shipped card has no fix gains (shapesworld.build.measure_fixes)"
    for fix, kinds in card["fix_gains"].items():
        row = next(x for x in text.splitlines() if x.startswith(f"| `{fix}` |"))
        for kind in ("object", "relation"):
            c = kinds[kind]
            cell = f"{100 * c['gain']:+.1f} [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}]"
            assert f"{cell}, n {c['n']}" in row, (fix, kind, row)


def test_the_screenshots_show_the_demos_current_defaults():
    """docs/screenshots.py records the settings it ran with; a change of the demo's defaults
    without new screenshots (python docs/screenshots.py) fails here."""
    import importlib.util

    docs = README.parent / "docs"
    spec = importlib.util.spec_from_file_location("screenshots", docs / "screenshots.py")
    shots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shots)
    recorded = json.loads((docs / "screenshots.json").read_text())["demo"]
    assert recorded == shots.demo_settings()
    assert all(
        (docs / n).is_file() for n in ("demo-report.png", "app-check.png", "app-generate.png")
    )


def test_demo_loads_a_lora_by_path_and_names_a_bad_one(tmp_path, capsys):
    """`clip4dm demo --lora PATH`: a LoRA saved by our trainer loads with stock diffusers and
    changes the images; an unknown name is one line listing what is shipped."""
    import torch

    from generation.finetune.lora import add_unet_lora, save_lora
    from shapesworld.pipelines import load_pipeline

    pipe = load_pipeline()
    params = add_unet_lora(pipe.unet, rank=4, seed=0)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    save_lora(pipe.unet, tmp_path / "lora")
    args = ["demo", "--prompts", "a small red circle", "--budget", "1", "--steps", "4"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--lora", str(tmp_path / "lora")]) == 0
    a = json.loads((tmp_path / "a" / "results.jsonl").read_text())
    b = json.loads((tmp_path / "b" / "results.jsonl").read_text())
    ca = a["rounds"][0]["reports"][0]["clip_score"]
    cb = b["rounds"][0]["reports"][0]["clip_score"]
    assert ca != cb  # the LoRA changed the image
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "c"), "--lora", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--lora nope: neither a shipped LoRA" in err and err.count("\n") == 1


def test_demo_takes_a_whole_unet_result_for_lora(tmp_path):
    """A recipe's `--train full` result (a stock diffusers UNet folder) given to `--lora`
    replaces the pipeline's UNet: the images change."""
    import torch

    from generation.finetune import make_trainable, save_trained
    from shapesworld.pipelines import load_pipeline

    pipe = load_pipeline()
    params = make_trainable(pipe.unet, "full")
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    save_trained(pipe.unet, "full", tmp_path / "unet")
    args = ["demo", "--prompts", "a small red circle", "--budget", "1", "--steps", "4"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--lora", str(tmp_path / "unet")]) == 0
    a = json.loads((tmp_path / "a" / "results.jsonl").read_text())
    b = json.loads((tmp_path / "b" / "results.jsonl").read_text())
    assert a["rounds"][0]["reports"][0]["clip_score"] != b["rounds"][0]["reports"][0]["clip_score"]


def test_demo_refuses_a_syntax_only_prompt_before_loading(tmp_path, capsys, monkeypatch):
    _no_model_loads(monkeypatch)
    assert main(["demo", "--out", str(tmp_path / "d"), "--prompts", "(( ))"]) == 2
    assert "is empty once its weight syntax is removed" in capsys.readouterr().err
