"""Bad input gets a clear error; every PIL mode is converted; over-long captions are visible."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from feedback import InputError, MisalignmentDetector, load_image
from generation.cli import main


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16", "LA", "1", "F"])
def test_every_pil_mode_is_converted(mode, tmp_path, images):
    base = images[0][0]
    if mode == "I;16":
        arr = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
    elif mode == "F":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255.0)
    else:
        img = base.convert(mode)
    path = tmp_path / f"img.{'tiff' if mode in ('I;16', 'F', 'CMYK') else 'png'}"
    img.save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == base.size
    if mode in ("I;16", "L", "F"):
        # 16-bit and float keep their brightness instead of saturating to white.
        ref = np.asarray(base.convert("L"), dtype=np.float64)
        got = np.asarray(rgb, dtype=np.float64)[..., 0]
        assert np.abs(got - ref).max() <= 1.0


def test_transparency_composited_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert load_image(img).getpixel((0, 0)) == (255, 255, 255)


def run_cli(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not_image",
        "directory",
        "empty",
        "blank",
        "unknown_model",
        "missing_dir_model",
        "arch_without_tag",
        "figure_missing_dir",
        "figure_txt",
        "positive_threshold",
        "hf_without_tokenizer",
        "hf_broken_tokenizer",
    ],
)
def test_bad_input_exits_2_with_one_line(
    case, tmp_path, tiny_open_clip_dir, tiny_hf_dir, images, capsys
):
    img = tmp_path / "ok.png"
    images[0][0].save(img)
    model = str(tiny_open_clip_dir)
    argv = ["check", str(img), "a red circle", "--model", model]
    if case == "missing":
        argv[1] = str(tmp_path / "nope.png")
        expect = "image not found"
    elif case == "not_image":
        bad = tmp_path / "notes.png"
        bad.write_text("hello")
        argv[1] = str(bad)
        expect = "not an image"
    elif case == "directory":
        argv[1] = str(tmp_path)
        expect = "directory"
    elif case == "empty":
        argv[2] = ""
        expect = "caption is empty"
    elif case == "blank":
        argv[2] = "  \t "
        expect = "caption is empty"
    elif case == "unknown_model":
        argv[4] = "no-such-model"
        expect = "unknown model"
    elif case == "missing_dir_model":
        argv[4] = str(tmp_path)  # a directory with no model in it
        expect = "neither a transformers CLIP"
    elif case == "arch_without_tag":
        argv[4] = "ViT-B-32"
        expect = "needs pretrained weights"
    elif case == "figure_missing_dir":
        argv += ["--figure", str(tmp_path / "missing-dir" / "x.png")]
        expect = "folder does not exist"
    elif case == "figure_txt":
        argv += ["--figure", str(tmp_path / "x.txt")]
        expect = "cannot write images as '.txt'"
    elif case == "positive_threshold":
        argv += ["--threshold", "0.01"]
        expect = "threshold must be <= 0"
    else:
        import shutil

        folder = tmp_path / "hf"
        shutil.copytree(tiny_hf_dir, folder)
        (folder / "tokenizer.json").unlink()
        if case == "hf_broken_tokenizer":
            (folder / "tokenizer.json").write_text("{ broken")
            expect = "no usable CLIP tokenizer"
        else:
            expect = "no tokenizer"
        argv[4] = str(folder)
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "offline_env",
    [
        {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        # No offline flag, but the endpoint refuses connections: found out by the probe,
        # not after tens of seconds of retries.
        {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
    ],
    ids=["offline-flag", "unreachable-endpoint"],
)
@pytest.mark.parametrize(
    "model",
    [
        ["--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"],
        ["--model", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"],
        ["--model", "openai/clip-vit-base-patch32"],
    ],
    ids=["open_clip-tag", "open_clip-hf-hub", "transformers-hub-id"],
)
def test_weights_not_available_offline(tmp_path, images, offline_env, model):
    img = tmp_path / "ok.png"
    images[0][0].save(img)
    env = {**os.environ, **offline_env, "HF_HOME": str(tmp_path / "hf")}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "feedback.cli", "check", str(img), "a cat", *model],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "offline" in lines[0], proc.stderr
    # the whole message, not cut mid-word, ending in the way to run offline
    end = "or pass a local folder; for the offline testbed pass --model shapes-tiny"
    assert lines[0].rstrip().endswith(end), lines[0]
    # Python + torch start-up dominates; the old path spent ~50 s in retries.
    assert elapsed < 30, elapsed


def test_cli_json_contract_on_local_transformers_dir(tmp_path, tiny_hf_dir, images, capsys):
    img = tmp_path / "img.png"
    images[1][0].save(img)
    caption = images[1][1] + "."
    code, out, _ = run_cli(
        ["check", str(img), caption, "--model", str(tiny_hf_dir), "--json", "--threshold", "0"],
        capsys,
    )
    assert code == 0
    d = json.loads(out)
    for key in (
        "caption",
        "clip_score",
        "f_clip_score",
        "sum_negative_attribution",
        "misaligned_words",
        "words",
    ):
        assert key in d
    assert d["caption"] == caption
    for w in d["words"]:
        assert set(w) >= {"word", "start", "end", "score", "misaligned"}
        assert caption[w["start"] : w["end"]] == w["word"]
    neg = [w for w in d["words"] if w["misaligned"]]
    assert d["misaligned_words"] == [w["word"] for w in neg]
    assert all(w["score"] < 0 for w in neg) and all(w["word"] != "." for w in neg)
    assert d["sum_negative_attribution"] == pytest.approx(sum(w["score"] for w in neg))
    # The effective settings travel with the result.
    assert d["settings"]["threshold"] == 0 and d["settings"]["model"] == str(tiny_hf_dir)
    assert d["settings"]["layers"] == 3 and d["settings"]["template"] == "A photo depicts "
    assert d["f_clip_score"] == pytest.approx(
        d["sum_negative_attribution"] * (1 - d["clip_score"] / 2.5)
    )


def test_cli_readable_output_marks_misaligned(tmp_path, tiny_open_clip_dir, images, capsys):
    img = tmp_path / "img.png"
    images[0][0].save(img)
    code, out, _ = run_cli(
        [
            "check",
            str(img),
            images[0][1],
            "--model",
            str(tiny_open_clip_dir),
            "--mode",
            "most-negative",
        ],
        capsys,
    )
    assert code == 0
    assert out.count("<-- misaligned") == 1 and "[" in out.splitlines()[0]


def test_over_long_caption_is_visible_and_does_not_shift_scores(tiny_open_clip_dir, images):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    image = images[0][0]
    long_caption = " ".join(["red"] * 40)  # one token per word; context 24 -> 22 content
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = det(image, long_caption)
    assert any("unscored" in str(w.message) for w in caught)
    assert rep.truncated and rep.to_dict()["truncated"]
    scored = [w for w in rep.words if w.score is not None]
    assert len(scored) == 22 - 3 and len(rep.unscored_words) == 40 - 19
    assert all(w.score is None for w in rep.words[19:])
    # The words that fit get exactly the scores of the caption cut to them.
    prefix = det(image, " ".join(["red"] * 19))
    assert not prefix.truncated
    assert [w.score for w in scored] == pytest.approx([w.score for w in prefix.words], abs=1e-7)
    assert json.loads(json.dumps(rep.to_dict()))["words"][-1]["score"] is None


def test_detect_validates_lengths_and_types(tiny_open_clip_dir, images):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    with pytest.raises(InputError, match="2 images but 1 captions"):
        det.detect([images[0][0], images[1][0]], ["a red circle"])
    with pytest.raises(InputError, match="list of strings"):
        det.detect([images[0][0]], "a red circle")
    with pytest.raises(InputError, match="must be a string"):
        det(images[0][0], None)


def test_figure_shows_misaligned_words(tmp_path, tiny_open_clip_dir, images, capsys):
    img = tmp_path / "img.png"
    images[0][0].save(img)
    fig = tmp_path / "fig.png"
    code = main(
        [
            "check",
            str(img),
            images[0][1],
            "--model",
            str(tiny_open_clip_dir),
            "--mode",
            "most-negative",
            "--figure",
            str(fig),
        ]
    )
    assert code == 0
    out = Image.open(fig)
    arr = np.asarray(out.convert("RGB"))
    assert out.size[0] > 256 and out.size[1] >= 256
    # The misaligned word is underlined in red (200, 0, 0).
    assert ((arr[..., 0] == 200) & (arr[..., 1] == 0) & (arr[..., 2] == 0)).sum() > 10


def test_nan_scores_raise_a_clear_error(tiny_open_clip_dir, images):
    from feedback import NonFiniteScoreError

    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    with torch.no_grad():
        det.backend.model.text_projection.fill_(float("nan"))
    with pytest.raises(NonFiniteScoreError, match="non-finite"):
        det(*images[0])


@pytest.mark.parametrize("case", ["wrong_format", "n0", "limit0"])
def test_eval_bad_input_one_line(case, tmp_path, tiny_open_clip_dir, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# not a benchmark\n")
    argv = ["eval", "--model", str(tiny_open_clip_dir)]
    if case == "wrong_format":
        argv += ["--benchmark", "hat", "--data", str(readme)]
        expect = "is not a hat file"
    elif case == "n0":
        argv += ["--benchmark", "shapes-foil", "--n", "0"]
        expect = "must be >= 1"
    else:
        argv += ["--benchmark", "shapes-foil", "--n", "2", "--limit", "0"]
        expect = "must be >= 1"
    try:
        code, out, err = run_cli(argv, capsys)
    except SystemExit as e:
        code, err = e.code, capsys.readouterr().err
    assert code == 2 and expect in err, err
    assert "Traceback" not in err


def test_zero_size_image_is_an_input_error(tiny_open_clip_dir):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    with pytest.raises(InputError, match="no pixels"):
        det(Image.new("RGB", (0, 0)), "a cat")


def test_help_states_real_defaults_and_version(capsys):
    """check's help names its default detector (the real CLIP, no model card: the paper's
    settings); demo's names the testbed's loop detector and its card's recommendation."""
    from feedback import recommended_settings
    from feedback.cli.options import DEFAULT_MODEL, PAPER
    from shapesworld.pipelines import LOOP_DETECTOR

    with pytest.raises(SystemExit):
        main(["check", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps at hyphens
    assert f"(default:{DEFAULT_MODEL})" in text
    assert recommended_settings(DEFAULT_MODEL) == {}
    assert f"{PAPER['layers']})" in text and f"{PAPER['threshold']})" in text
    assert "default:fp32" in text and "default:gradient" in text
    card = recommended_settings(LOOP_DETECTOR)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = "".join(capsys.readouterr().out.split())
    assert f"(default:{LOOP_DETECTOR})" in text
    assert f"{LOOP_DETECTOR}:{card['layers']}" in text
    from generation.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        for action in parser._actions:
            assert action.help, f"{name} {action.dest} has no help"
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("clip4dm ")


def test_warnings_once_and_long_words_shortened(tmp_path, tiny_open_clip_dir, images, capsys):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    caption = "a " + "x" * 10_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det(images[0][0], caption)
    msgs = [str(w.message) for w in caught if "tokens with the template" in str(w.message)]
    assert len(msgs) == 1 and len(msgs[0]) < 300
    assert capsys.readouterr().err == ""  # one channel: nothing printed besides the warning
    # On the CLI: the warning is one line, printed once.
    p = tmp_path / "i.png"
    images[0][0].save(p)
    code = main(["check", str(p), caption, "--model", str(tiny_open_clip_dir), "--json"])
    err = capsys.readouterr().err
    assert code == 0
    assert err.count("clip4dm: warning:") == 1 and len(err) < 400, err


def test_cli_leaves_global_state_alone(tmp_path, tiny_open_clip_dir, images, capsys):
    img = tmp_path / "i.png"
    images[0][0].save(img)
    before_filters = list(warnings.filters)
    root = logging.getLogger()
    before_level = root.level
    assert main(["check", str(img), "a red circle", "--model", str(tiny_open_clip_dir)]) == 0
    assert warnings.filters == before_filters and root.level == before_level


def _report(caption, scores=None):
    from feedback.report import MisalignmentReport, WordScore
    from feedback.words import split_words

    ws = split_words(caption)
    scores = scores or [(-1) ** i * 0.001 * (i + 1) for i in range(len(ws))]
    words = [WordScore(w.text, w.start, w.end, s, s < 0) for w, s in zip(ws, scores)]
    return MisalignmentReport(caption, words, 0.3, 0.75, -0.1, -0.07)


def test_figure_keeps_aspect_and_fits_long_captions():
    from feedback.figures import render_report

    short = render_report(Image.new("RGB", (64, 32), (255, 0, 0)), _report("a red cat"))
    arr = np.asarray(short)
    red = np.argwhere((arr[..., 0] == 255) & (arr[..., 1] == 0) & (arr[..., 2] == 0))
    h = red[:, 0].max() - red[:, 0].min() + 1
    w = red[:, 1].max() - red[:, 1].min() + 1
    assert w == 2 * h, (w, h)  # not squashed into a square
    long = render_report(Image.new("RGB", (32, 32)), _report(" ".join(["word"] * 120)))
    assert long.height > short.height + 100
    # The summary sits inside the canvas: dark text pixels in the band above the bottom margin.
    bottom = np.asarray(long)[-40:-8, 256:]
    assert (bottom.min(axis=-1) < 100).any()


def test_figure_says_when_characters_cannot_be_drawn():
    from feedback.figures import font_for, undrawable_words

    rep = _report("a 猫 cat")
    missing = undrawable_words(rep)
    # Either a font covering CJK is installed (then it is used), or the figure says so.
    assert missing in ([], ["猫"])
    assert font_for("cat", 18)[1] and font_for("قطة", 18)[1]
    from feedback.figures import summary_lines

    noted = any("no installed font" in line for line in summary_lines(rep))
    assert noted == bool(missing)
    assert not any("no installed font" in line for line in summary_lines(_report("a dog")))


@pytest.mark.slow
def test_registry_does_not_import_the_testbed_for_other_models(tiny_open_clip_dir):
    code = (
        "import sys; from feedback import MisalignmentDetector; "
        f"MisalignmentDetector.from_pretrained({str(tiny_open_clip_dir)!r}); "
        "assert 'shapesworld' not in sys.modules, 'testbed imported'; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-1500:]
