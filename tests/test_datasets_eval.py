"""Benchmark loaders on fixtures in the published layouts (tests/fixtures/benchmarks), the
paper's metric conventions per benchmark, and the eval CLI."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feedback import MisalignmentDetector
from feedback.errors import InputError
from feedback.eval.datasets import Sample, load_benchmark, richhf_tokens
from feedback.eval.evaluate import evaluate, flagged_phrases, run_benchmark
from feedback.eval.metrics import average_precision, word_prf
from feedback.report import MisalignmentReport, WordScore
from feedback.words import split_words
from generation.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
CAT = "5e1f7c3a-9d2b-4c11-8a3e-2f6d0b7c9e41"  # prompt "A red cat sitting on a blue sofa"
CAR = "b07a2d6e-1c4f-4e8a-9b35-7d2e6c1a0f88"  # prompt 'A "vintage" car,\nparked: near a lake!'


def _write_images(folder: Path, names: list[str]) -> Path:
    """Tiny solid-colour images under the given file names (format from the extension)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.new("RGB", (8, 8), (60 * k % 256, 120, 200)).save(folder / name)
    return folder


def _png(size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 0).save(buf, format="PNG")
    return buf.getvalue()


def _write_richhf(path: Path, records: list[tuple[str, float, str]]) -> Path:
    """A tfrecord with RichHF-18K's features (filename, the four scores, both heatmaps as
    PNG bytes, prompt_misalignment_label) for each (filename, misalignment_score, labels)."""
    from tfrecord.writer import TFRecordWriter

    w = TFRecordWriter(str(path))
    for fname, score, labels in records:
        w.write(
            {
                "filename": (fname.encode(), "byte"),
                "aesthetics_score": (0.75, "float"),
                "artifact_score": (0.5, "float"),
                "misalignment_score": (score, "float"),
                "overall_score": (0.625, "float"),
                "artifact_map": (_png(), "byte"),
                "misalignment_map": (_png(), "byte"),
                "prompt_misalignment_label": (labels.encode(), "byte"),
            }
        )
    w.close()
    return path


@pytest.fixture
def richhf(tmp_path):
    """(tfrecord, images folder): the download script's layout, <stem>.png beside <stem>.txt."""
    images = tmp_path / "richhf_test"
    shutil.copytree(FIXTURES / "richhf" / "images", images)
    _write_images(images, [f"{CAT}.png", f"{CAR}.png"])
    rec = _write_richhf(
        tmp_path / "test.tfrecord",
        [(f"test/{CAT}.png", 0.25, "1 0 1 1 1 1 0 1"), (f"test/{CAR}.png", 0.875, "1 1 1 1 1 1 1")],
    )
    return rec, images


def _seetrue_rows() -> list[dict]:
    with (FIXTURES / "seetrue" / "SeeTRUE-Feedback.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ---- loaders ---------------------------------------------------------------------------


def test_foil_coco_published_layout(tmp_path):
    images = _write_images(
        tmp_path / "val2014", ["COCO_val2014_000000000042.jpg", "COCO_val2014_000000000073.jpg"]
    )
    s = load_benchmark("foil", FIXTURES / "foil" / "foilv1.0_test_2017.json", images_dir=images)
    # `id` (the COCO caption id) repeats between the original and its foil; foil_id does not.
    assert [x.id for x in s] == ["2000001", "2000002", "2000003"]
    assert [x.is_original for x in s] == [True, False, False]
    assert s[1].foil_words == ["cat"] and s[1].foil_spans == [(2, 5)]
    assert s[2].caption == "Two men riding a bus down the street"
    assert s[0].image == str(images / "COCO_val2014_000000000042.jpg")


def test_nocaps_foil_published_layout(tmp_path):
    s = load_benchmark("nocaps-foil", FIXTURES / "nocaps" / "nocaps-val-foil.json")
    assert [(x.id, x.is_original, x.kind) for x in s] == [
        ("0-foil", False, "out-domain"),
        ("0-orig", True, "out-domain"),
        ("1-foil", False, "near-domain"),
        ("1-orig", True, "near-domain"),
    ]
    assert s[0].foil_spans == [(2, 10)] and s[2].foil_spans == [(16, 29)]
    assert s[0].image == str(FIXTURES / "nocaps" / "0013ea2087020901.jpg")


def test_hat_published_layout():
    s = load_benchmark("hat", FIXTURES / "hat" / "hat_test.json", images_dir="/coco")
    assert [x.id for x in s] == ["hat-0017", "hat-0003"]
    assert s[0].is_original is False and s[0].foil_words == ["red", "frisbee"]
    assert s[1].is_original is True and s[1].foil_spans == []
    assert len(s[0].word_labels) == 10 and s[0].image == "/coco/COCO_val2014_000000000042.jpg"


def test_richhf_reads_txt_prompt_and_official_labels(richhf):
    rec, images = richhf
    cat, car = load_benchmark("richhf", rec, images_dir=images)
    assert cat.caption == "A red cat sitting on a blue sofa"
    # "0" marks a misaligned token in RichHF-18K.
    assert cat.foil_words == ["red", "blue"]
    assert [cat.caption[a:b] for a, b, lab in cat.word_labels if lab] == ["red", "blue"]
    assert cat.is_original is False and cat.human_score == pytest.approx(0.25)
    assert cat.id == f"test/{CAT}.png" and cat.image == str(images / f"{CAT}.png")
    # Official tokenization: a newline is not a separator; quotes, comma, colon, "!" are.
    assert [car.caption[a:b] for a, b, _ in car.word_labels] == [
        "A",
        "vintage",
        "car",
        "\nparked",
        "near",
        "a",
        "lake",
    ]
    assert car.is_original is True and car.foil_words == []


def test_richhf_prompts_mapping_is_an_alternative(tmp_path):
    rec = _write_richhf(tmp_path / "r.tfrecord", [(f"train/{CAT}.jpg", 0.5, "0 1 1")])
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({CAT: "big, red ball"}))
    (s,) = load_benchmark("richhf", rec, images_dir=tmp_path / "none", prompts=prompts)
    assert s.caption == "big, red ball" and s.foil_words == ["big"]
    assert richhf_tokens("a\tb c") == [(0, 3), (4, 5)]


def test_richhf_bad_records_are_input_errors(tmp_path, richhf):
    rec, images = richhf
    with pytest.raises(InputError, match=rf"no prompt for test/{CAT}.png: .*{CAT}.txt"):
        load_benchmark("richhf", rec, images_dir=tmp_path)
    short = _write_richhf(tmp_path / "short.tfrecord", [(f"test/{CAT}.png", 0.5, "1 0")])
    with pytest.raises(InputError, match="2 labels for 8 prompt tokens"):
        load_benchmark("richhf", short, images_dir=images)
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(rec.read_bytes()[:-10])
    with pytest.raises(InputError, match="is not a TFRecord file or is truncated"):
        load_benchmark("richhf", cut, images_dir=images)


def test_seetrue_published_csv(tmp_path):
    images = _write_images(tmp_path / "imgs", ["drawbench_61_sd21.png", "coco_con_118.png"])
    csv_path = FIXTURES / "seetrue" / "SeeTRUE-Feedback.csv"
    a, b = load_benchmark("seetrue", csv_path, images_dir=images)
    assert a.image == str(images / "drawbench_61_sd21.png") and a.kind == "DrawBench"
    assert a.misalignment_text == "green bench" and a.is_original is False
    assert b.caption == 'Two dogs, one "black" and one white.' and b.kind == "COCO-Con"


def _seetrue_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _seetrue_rows()
    images = [Image.new("RGB", (6 + k, 5), (200, 30 * k, 0)) for k in range(len(rows))]
    features = datasets.Features(
        {**{k: datasets.Value("string") for k in rows[0]}, "image": datasets.Image()}
    )
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    return datasets, datasets.Dataset.from_dict({**cols, "image": images}, features=features)


def test_seetrue_save_to_disk_dataset_dict_and_single_split(tmp_path):
    datasets, test = _seetrue_dataset(tmp_path)
    train = test.select([0])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    s = load_benchmark("seetrue", tmp_path / "dd")
    assert [x.caption for x in s] == [r["image_caption"] for r in _seetrue_rows()]
    assert [x.image.size for x in s] == [(6, 5), (7, 5)]
    assert s[1].misalignment_text == "Two dogs" and s[1].kind == "COCO-Con"
    test.save_to_disk(str(tmp_path / "single"))
    assert len(load_benchmark("seetrue", tmp_path / "single")) == 2
    datasets.DatasetDict({"train": train}).save_to_disk(str(tmp_path / "no_test"))
    with pytest.raises(InputError, match=r"no 'test' split \(splits: train\)"):
        load_benchmark("seetrue", tmp_path / "no_test")


def test_seetrue_to_json_export_with_paths(tmp_path):
    datasets = pytest.importorskip("datasets")
    exported = _write_images(tmp_path / "exported", ["drawbench_61_sd21.png", "coco_con_118.png"])
    rows = _seetrue_rows()
    ds = datasets.Dataset.from_dict(
        {
            "image_caption": [r["image_caption"] for r in rows],
            "caption_misalignment": [r["caption_misalignment"] for r in rows],
            "image": [str(exported / r["image_name"]) for r in rows],
        },
        features=datasets.Features(
            {
                "image_caption": datasets.Value("string"),
                "caption_misalignment": datasets.Value("string"),
                "image": datasets.Image(),
            }
        ),
    )
    out = tmp_path / "seetrue.json"  # to_json writes JSON Lines whatever the name
    ds.to_json(str(out))
    assert '"bytes":null' in out.read_text()
    s = load_benchmark("seetrue", out)
    assert s[0].image == str(exported / "drawbench_61_sd21.png")
    # Moved to another machine: the absolute path is looked up in --images by its name.
    shutil.move(exported, tmp_path / "here")
    s = load_benchmark("seetrue", out, images_dir=tmp_path / "here")
    assert s[1].image == str(tmp_path / "here" / "coco_con_118.png")


def test_seetrue_to_json_export_with_bytes(tmp_path):
    rec = {
        "image_caption": "A green bench.",
        "image": {"bytes": base64.b64encode(_png((5, 3))).decode(), "path": None},
        "caption_misalignment": "green bench",
        "dataset_source": "DrawBench",
    }
    path = tmp_path / "seetrue.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (s,) = load_benchmark("seetrue", path)
    assert s.image.size == (5, 3) and s.misalignment_text == "green bench"


def test_seetrue_bad_forms_are_input_errors(tmp_path):
    bad_csv = tmp_path / "x.csv"
    bad_csv.write_text("caption,file\na,b\n")
    with pytest.raises(InputError, match="needs the columns image_caption and image_name"):
        load_benchmark("seetrue", bad_csv)
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="not a dataset saved with save_to_disk"):
        load_benchmark("seetrue", tmp_path / "folder")


@pytest.mark.parametrize(
    ("benchmark", "content", "message"),
    [
        ("richhf", b"this is not a tfrecord file at all", "is not a TFRecord file"),
        ("foil", b"image_caption,image_name\n", "not a foil file"),
        ("hat", b'[{"caption": "a dog"}]', "KeyError"),
        ("seetrue", b'{"image_caption": "a"}\n', "expected a list of records"),
    ],
)
def test_eval_cli_bad_benchmark_files_exit_2(tmp_path, capsys, benchmark, content, message):
    path = tmp_path / "bench.data"
    path.write_bytes(content)
    code = main(["eval", "--benchmark", benchmark, "--data", str(path)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("clip4dm: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err


def test_unknown_benchmark_and_missing_file(tmp_path, capsys):
    code = main(["eval", "--benchmark", "foil", "--data", str(tmp_path / "none.json")])
    assert code == 2 and "benchmark file not found" in capsys.readouterr().err


# ---- metrics ---------------------------------------------------------------------------


def _report(caption, scores, cos=0.3):
    words = [
        WordScore(w.text, w.start, w.end, s, False) for w, s in zip(split_words(caption), scores)
    ]
    return MisalignmentReport(caption, words, cos, 2.5 * max(cos, 0), 0.0, 0.0)


def test_evaluate_metrics_on_known_scores():
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


def test_average_precision_conventions():
    is_orig, scores = [1, 0, 1, 0], [0.9, 0.8, 0.1, 0.2]
    # Originals positive, ranked by the score: hits at ranks 1 and 4.
    assert average_precision(is_orig, scores, "original") == pytest.approx((1 + 2 / 4) / 2)
    # Foils positive, ranked by the negated score: hits at ranks 2 and 3.
    assert average_precision(is_orig, scores, "foil") == pytest.approx((1 / 2 + 2 / 3) / 2)


def _ap_case():
    caps = ["a dog", "a cat", "a bird", "a fish"]
    samples = [
        Sample(str(i), None, c, is_original=bool(i % 2 == 0), foil_spans=[(2, len(c))])
        for i, c in enumerate(caps)
    ]
    reports = [_report(c, [1e-4, 1e-4], cos) for c, cos in zip(caps, [0.36, 0.32, 0.04, 0.08])]
    return samples, reports


@pytest.mark.parametrize(
    ("benchmark", "positive"),
    [
        ("foil", "original"),
        ("nocaps-foil", "original"),
        ("shapes-foil", "original"),
        ("seetrue", "original"),
        ("hat", "foil"),
        ("richhf", "foil"),
    ],
)
def test_ap_follows_the_paper_per_benchmark(benchmark, positive):
    samples, reports = _ap_case()
    expected = {"original": 0.75, "foil": (1 / 2 + 2 / 3) / 2}
    r = evaluate(reports, samples, benchmark=benchmark)
    assert r.metrics["ap_positive"] == positive and r.settings["ap_positive"] == positive
    assert r.metrics["ap_clipscore"] == pytest.approx(expected[positive])
    other = "foil" if positive == "original" else "original"
    r = evaluate(reports, samples, benchmark=benchmark, ap_positive=other)
    assert r.metrics["ap_positive"] == other
    assert r.metrics["ap_clipscore"] == pytest.approx(expected[other])


def test_flagged_phrases_skip_punctuation():
    # words: a, red, ",", frisbee, on, grass
    eligible = [not w.is_punctuation for w in split_words("a red, frisbee on grass")]
    assert flagged_phrases([5, 1, 3], eligible) == [[1, 3], [5]]


def test_hat_la_merges_adjacent_flagged_words():
    cap = "a red frisbee on grass"
    hallucinated = [(2, 5), (6, 13)]  # "red frisbee"
    s1 = Sample("1", None, cap, is_original=False, foil_spans=hallucinated)
    s2 = Sample("2", None, cap, is_original=False, foil_spans=hallucinated)
    reports = [
        # "red frisbee" (mean -2e-4) beats "grass" (-1.5e-4): a hit.
        _report(cap, [1e-4, -1e-4, -3e-4, 1e-4, -1.5e-4]),
        # "grass" (-2.5e-4) beats "red frisbee" (mean -2e-4), though "red" alone is lowest.
        _report(cap, [1e-4, -3e-4, -1e-4, 1e-4, -2.5e-4]),
    ]
    assert evaluate(reports, [s1, s2], benchmark="hat").metrics["la"] == pytest.approx(0.5)
    # The single most negative word ("frisbee", then "red") hits both times.
    assert evaluate(reports, [s1, s2], benchmark="foil").metrics["la"] == pytest.approx(1.0)
    # A phrase that takes in an aligned word misses.
    s3 = Sample("3", None, cap, is_original=False, foil_spans=[(6, 13)])
    one = [_report(cap, [1e-4, -1e-4, -3e-4, 1e-4, 1e-4])]
    assert evaluate(one, [s3], benchmark="hat").metrics["la"] == 0.0


def test_richhf_la_counts_any_flagged_misaligned_word():
    cap = "a red cat on a blue sofa"
    labels = [(a, b, int(cap[a:b] in ("red", "blue"))) for a, b in richhf_tokens(cap)]
    bad = [(a, b) for a, b, lab in labels if lab]
    foil = Sample("f", None, cap, is_original=False, foil_spans=bad, word_labels=labels)
    miss = Sample("m", None, cap, is_original=False, foil_spans=bad, word_labels=labels)
    ok = Sample("o", None, cap, is_original=True, word_labels=[(a, b, 0) for a, b, _ in labels])
    reports = [
        _report(cap, [-3e-4, -1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4]),  # "a" lowest, "red" flagged
        _report(cap, [-3e-4, 1e-4, -1e-4, 1e-4, 1e-4, 1e-4, 1e-4]),  # flags "a", "cat" only
        _report(cap, [1e-4] * 7),
    ]
    r = evaluate(reports, [foil, miss, ok], benchmark="richhf")
    assert r.metrics["la"] == pytest.approx(0.5)
    assert evaluate(reports, [foil, miss, ok], benchmark="foil").metrics["la"] == 0.0


def test_seetrue_nli_protocol():
    cap = "A green bench near a white house"
    s1 = Sample("1", None, cap, False, misalignment_text="Green Bench", kind="DrawBench")
    s2 = Sample("2", None, cap, False, misalignment_text="white house", kind="DrawBench")
    reports = [
        _report(cap, [1e-4, -2e-4, -1e-4, 1e-4, 1e-4, 1e-4, -1e-4]),
        _report(cap, [1e-4] * 7),  # nothing flagged: scores 0 without asking the model
    ]
    calls = []

    def fake_nli(premises, hypotheses):
        calls.append((premises, hypotheses))
        return [0.8] * len(premises)

    r = evaluate(reports, [s1, s2], benchmark="seetrue", nli=fake_nli)
    assert calls == [(["green bench"], ["green bench, house"])]
    assert r.metrics["nli"] == pytest.approx(0.4) and r.per_kind["DrawBench"]["nli"] == 0.4
    assert math.isnan(r.metrics["la"])


# ---- detector runs ---------------------------------------------------------------------


def test_run_benchmark_shapes_and_random_baseline(tiny_open_clip_dir):
    from shapesworld.benchmark import load_shapes_foil

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
    assert d["metrics"]["ap_positive"] == "original"


def test_eval_cli_richhf_prints_ap_convention(tiny_open_clip_dir, capsys, richhf):
    rec, images = richhf
    args = ["eval", "--benchmark", "richhf", "--data", str(rec), "--images", str(images)]
    args += ["--model", str(tiny_open_clip_dir)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-1] == "ap_positive" and lines[2].split()[-1] == "foil"
    assert main([*args, "--ap-positive", "original"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[-1] == "original"


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


def _labelled(tmp_path, n=12):
    """Labelled 'generated' images: ShapesWorld scenes with true captions (right) and
    foils (wrong, with the foiled word named)."""
    from shapesworld import foil_set

    rows = []
    for i, ex in enumerate(foil_set(n, seed=5)):
        ex.image().save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": ex.caption.text, "right": True})
        rows.append(
            {
                "image": f"{i}.png",
                "caption": ex.foil.foil,
                "right": False,
                "wrong_words": [ex.foil.foil_word],
            }
        )
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_calibrate_on_labelled_generated_images(tmp_path, capsys):
    from feedback.eval.calibration import load_labelled, lowest_eligible_score

    path, rows = _labelled(tmp_path)
    samples = load_labelled(path)
    assert [s.is_original for s in samples] == [r["right"] for r in rows]
    s = samples[1]
    # every occurrence of a named wrong word counts
    assert {s.caption[a:b] for a, b in s.foil_spans} == set(rows[1]["wrong_words"])
    out = tmp_path / "cal.json"
    code = main(
        [
            "calibrate",
            "--data",
            str(path),
            "--model",
            "shapes-tiny",
            "--rate",
            "0.25",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "eps = " in printed and "--threshold" in printed
    cal = json.loads(out.read_text())
    det = MisalignmentDetector.from_pretrained("shapes-tiny")
    right = [x for x in samples if x.is_original]
    lows = [
        lowest_eligible_score(r)
        for r in det.detect([x.image for x in right], [x.caption for x in right])
    ]
    flagged = sum(v < cal["threshold"] for v in lows)
    # the largest eps that flags at most 25% of the right images
    assert flagged <= 0.25 * len(right) and cal["false_flag_rate"] == flagged / len(right)
    assert sum(v <= cal["threshold"] for v in lows) > 0.25 * len(right) or cal["threshold"] == 0


@pytest.mark.parametrize(
    "row, expect",
    [
        ({"image": "0.png", "caption": "a red circle"}, "missing right"),
        ({"image": "0.png", "caption": "a red circle", "right": "yes"}, "must be true or false"),
        (
            {"image": "0.png", "caption": "a red circle", "right": False, "wrong_words": ["blue"]},
            "'blue' is not in the caption",
        ),
    ],
)
def test_calibrate_bad_labels_one_line(row, expect, tmp_path, capsys):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(row) + "\n")
    code = main(["calibrate", "--data", str(path), "--model", "shapes-tiny"])
    err = capsys.readouterr().err
    assert code == 2 and expect in err and "labels.jsonl:1" in err and "Traceback" not in err
