"""The shipped `shapes-tiny` CLIP loads offline by name and actually finds foiled words."""

from __future__ import annotations

import json

import pytest

from feedback import MisalignmentDetector, recommended_settings, shipped_models
from feedback.cli import main
from feedback.datasets import load_shapes_foil
from feedback.evaluate import run_benchmark


@pytest.fixture(scope="module")
def det():
    assert "shapes-tiny" in shipped_models()
    return MisalignmentDetector.from_pretrained("shapes-tiny")


def test_loads_by_name_with_card_recommendations(det):
    rec = recommended_settings("shapes-tiny")
    assert det.config.layers == rec["layers"] and det.config.threshold == rec["threshold"]
    assert type(det.backend).__name__ == "OpenClipBackend"
    # Explicit options still win over the card.
    assert MisalignmentDetector.from_pretrained("shapes-tiny", layers=3).config.layers == 3


def test_cli_default_model_runs_offline(tmp_path, capsys):
    ex = next(iter(load_shapes_foil(n=1)))
    path = tmp_path / "img.png"
    ex.image.save(path)
    assert main(["check", str(path), ex.caption, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["caption"] == ex.caption and len(d["words"]) == len(ex.caption.split())


def test_localizes_color_and_shape_foils_far_above_chance(det):
    # 40 held-out items per kind; chance (random content word) is about 1/4 to 1/3.
    samples = [s for s in load_shapes_foil(n=160) if s.kind in ("color", "shape")]
    r = run_benchmark(det, samples, benchmark="shapes-foil", progress=False)
    assert r.per_kind["color"]["la"] >= 0.75, r.per_kind
    assert r.per_kind["shape"]["la"] >= 0.6, r.per_kind
    # Foiled captions get the more negative F-CLIPScore.
    assert r.metrics["ap_fclipscore"] >= 0.85, r.metrics
