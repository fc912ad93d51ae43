"""Benchmark loaders on small files written here in the published formats; metrics; eval CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from feedback import MisalignmentDetector
from feedback.cli import main
from feedback.eval.datasets import load_benchmark, richhf_tokens
from feedback.eval.evaluate import evaluate, run_benchmark
from feedback.eval.metrics import average_precision, word_prf
from feedback.report import MisalignmentReport, WordScore
from feedback.words import split_words


@pytest.fixture
def image_dir(tmp_path, images):
    d = tmp_path / "imgs"
    d.mkdir()
    for i, (im, _) in enumerate(images):
        im.save(d / f"{i}.png")
    return d


def test_foil_coco_format(tmp_path, image_dir):
    data = {
        "images": [{"id": 7, "file_name": "0.png"}],
        "annotations": [
            {"id": 1, "image_id": 7, "caption": "a red circle", "foil": False, "foil_word": "ORIG"},
            {"id": 2, "image_id": 7, "caption": "a blue circle", "foil": True, "foil_word": "blue"},
        ],
    }
    path = tmp_path / "foil.json"
    path.write_text(json.dumps(data))
    s = load_benchmark("foil", path, images_dir=image_dir)
    assert [x.is_original for x in s] == [True, False]
    assert s[1].foil_words == ["blue"] and s[1].foil_spans == [(2, 6)]
    assert s[0].image == str(image_dir / "0.png")


def test_nocaps_foil_yields_foil_and_original(tmp_path, image_dir):
    rec = {
        "foil": "a cat on a sofa",
        "baseline": "a dog on a sofa",
        "replacement": ["dog", "cat"],
        "image_path": "1.png",
        "domain": "near",
        "references": ["a dog"],
    }
    path = tmp_path / "nocaps.json"
    path.write_text(json.dumps([rec]))
    s = load_benchmark("nocaps-foil", path, images_dir=image_dir)
    assert [(x.caption, x.is_original) for x in s] == [
        ("a cat on a sofa", False),
        ("a dog on a sofa", True),
    ]
    assert s[0].foil_spans == [(2, 5)] and s[0].kind == "near"


def test_hat_grounding(tmp_path, image_dir):
    rec = {
        "caption": "a man riding a horse",
        "image_path": "2.png",
        "grounding": [["a", 0], ["man", 0], ["riding", 0], ["a", 0], ["horse", 1]],
        "references": [],
    }
    path = tmp_path / "hat.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (s,) = load_benchmark("hat", path, images_dir=image_dir)
    assert s.is_original is False and s.foil_words == ["horse"]
    assert s.word_labels[-1] == (15, 20, 1) and sum(lab for *_, lab in s.word_labels) == 1


def test_richhf_tfrecord(tmp_path, image_dir):
    from tfrecord.writer import TFRecordWriter

    prompt = 'A red "circle", left of: a cube?'
    tokens = richhf_tokens(prompt)
    assert [prompt[a:b] for a, b in tokens] == ["A", "red", "circle", "left", "of", "a", "cube"]
    path = tmp_path / "richhf.tfrecord"
    w = TFRecordWriter(str(path))
    w.write(
        {
            "filename": (b"3.png", "byte"),
            "misalignment_score": (2.5, "float"),
            "prompt_misalignment_label": (b"0 1 0 0 0 0 1", "byte"),
        }
    )
    w.close()
    (tmp_path / "prompts.json").write_text(json.dumps({"3.png": prompt}))
    (s,) = load_benchmark("richhf", path, images_dir=image_dir, prompts=tmp_path / "prompts.json")
    assert s.caption == prompt and s.human_score == pytest.approx(2.5)
    assert [prompt[a:b] for a, b, lab in s.word_labels if lab] == ["red", "cube"]


def test_seetrue_jsonl(tmp_path, image_dir):
    rec = {
        "image": "4.png",
        "image_caption": "two dogs",
        "caption_misalignment": "there is one dog",
        "dataset_source": "drawbench",
    }
    path = tmp_path / "seetrue.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (s,) = load_benchmark("seetrue", path, images_dir=image_dir)
    assert s.misalignment_text == "there is one dog" and s.kind == "drawbench"


def test_unknown_benchmark_and_missing_file(tmp_path, capsys):
    code = main(["eval", "--benchmark", "foil", "--data", str(tmp_path / "none.json")])
    assert code == 2 and "benchmark file not found" in capsys.readouterr().err


def _report(caption, scores, cos=0.3):
    words = [
        WordScore(w.text, w.start, w.end, s, False) for w, s in zip(split_words(caption), scores)
    ]
    return MisalignmentReport(caption, words, cos, 2.5 * max(cos, 0), 0.0, 0.0)


def test_evaluate_metrics_on_known_scores():
    from feedback.eval.datasets import Sample

    foil = Sample("f", None, "a blue circle", False, ["blue"], [(2, 6)], kind="color")
    orig = Sample("o", None, "a red circle", True, kind="color")
    foil2 = Sample("f2", None, "a red square", False, ["square"], [(6, 12)], kind="shape")
    reports = [
        _report(foil.caption, [1e-4, -3e-4, -1e-4], cos=0.2),  # localized: "blue"
        _report(orig.caption, [1e-4, 2e-4, 1e-4], cos=0.3),
        _report(foil2.caption, [-2e-4, 1e-4, -1e-4], cos=0.25),  # wrong pick: "a"
    ]
    r = evaluate(reports, [foil, orig, foil2], benchmark="shapes-foil", threshold=-5e-5)
    assert r.metrics["la"] == pytest.approx(0.5)
    assert r.per_kind["color"]["la"] == 1.0 and r.per_kind["shape"]["la"] == 0.0
    # The original has the highest CLIPScore and an F-CLIPScore of ~0: both APs are perfect.
    assert r.metrics["ap_clipscore"] == pytest.approx(1.0)
    assert r.metrics["ap_fclipscore"] == pytest.approx(1.0)
    # Threshold words: foil -> {blue, circle}; foil2 -> {a, square}: TP 2, FP 2, FN 0.
    assert r.metrics["precision"] == pytest.approx(0.5)
    assert r.metrics["recall"] == pytest.approx(1.0)
    sweep = {row["threshold"]: row for row in r.threshold_sweep}
    assert sweep[-1e-3]["recall"] == 0.0


def test_metric_functions():
    assert average_precision([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2]) == pytest.approx(1.0)
    assert math.isnan(average_precision([1, 1], [0.1, 0.2]))
    assert word_prf([1, 0, 1], [1, 1, 0]) == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    )


def test_run_benchmark_shapes_and_random_baseline(tiny_open_clip_dir):
    from feedback.eval.datasets import load_shapes_foil

    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    samples = list(load_shapes_foil(n=24))
    r = run_benchmark(det, samples, benchmark="shapes-foil", progress=False)
    assert r.n_samples == 48 and set(r.per_kind) == {"color", "shape", "size", "position"}
    assert 0.0 <= r.metrics["la"] <= 1.0 and r.settings["mode"] == "most-negative"
    rnd = run_benchmark(det, samples, benchmark="shapes-foil", picker="random", progress=False)
    assert 0.0 <= rnd.metrics["la"] <= 1.0
    # Determinism: the held-out set and the detector are both fixed.
    again = run_benchmark(det, samples, benchmark="shapes-foil", progress=False)
    assert again.metrics["la"] == r.metrics["la"]


def test_eval_cli_prints_table(tiny_open_clip_dir, capsys, tmp_path):
    out = tmp_path / "r.json"
    code = main(
        [
            "eval",
            "--benchmark",
            "shapes-foil",
            "--n",
            "12",
            "--model",
            str(tiny_open_clip_dir),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "ap_fclipscore" in text and "color" in text
    d = json.loads(out.read_text())
    assert d["n_samples"] == 24 and np.isfinite(d["metrics"]["ap_clipscore"])


def test_occlusion_method(tiny_open_clip_dir, images):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), method="occlusion")
    grad = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    image, caption = images[2]
    rep = det(image, caption)
    g = grad(image, caption)
    assert rep.cosine == pytest.approx(g.cosine, abs=1e-6)
    # A word's occlusion score is exactly the cosine drop when it is deleted.
    w = rep.words[1]
    short = caption[: w.start] + caption[w.end + 1 :]
    without = grad(image, short).cosine
    assert w.score == pytest.approx(rep.cosine - without, abs=1e-5)
