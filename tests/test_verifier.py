"""The verifier: features from the detector's outputs, a logistic fit on labelled images, its
JSON card, and the loop's selection and stop by it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny_pipelines as tp
import torch

from feedback import (
    InputError,
    MisalignmentDetector,
    MisalignmentReport,
    Verifier,
    WordScore,
    fit_verifier,
)
from feedback.verifier import FEATURES, image_features
from generation import FeedbackPipeline, LoopConfig
from generation.fixes import FIX_KINDS, fix_gains, fix_pays, set_fix_gains

EPS = -0.002


def _rep(clip: float, lowest: float, caption="a red circle") -> MisalignmentReport:
    words = [
        WordScore("a", 0, 1, 0.001, False),
        WordScore("red", 2, 5, lowest, lowest < EPS),
        WordScore("circle", 6, 12, 0.002, False),
    ]
    neg = sum(w.score for w in words if w.misaligned)
    return MisalignmentReport(caption, words, clip / 2.5, clip, neg, neg * (1 - clip / 2.5))


def _pool(n_prompts=60, seed=0):
    """Synthetic groups of 4 images: right ones have a higher CLIPScore and no low word."""
    rng = np.random.default_rng(seed)
    groups, labels = [], []
    for g in range(n_prompts):
        hard = g % 2
        ys = rng.random(4) < (0.3 if hard else 0.8)
        reps = [
            _rep(0.6 + 0.1 * y - 0.05 * hard + rng.normal(0, 0.03), -0.001 - 0.004 * (not y))
            for y in ys
        ]
        groups.append(reps)
        labels.append(list(map(bool, ys)))
    return groups, labels


def test_features_are_relative_to_the_prompts_best():
    f = image_features([_rep(0.7, -0.001), _rep(0.5, -0.006)], unit=-EPS)
    assert len(f) == 2 and len(f[0]) == len(FEATURES)
    i = FEATURES.index
    assert f[0][i("clip_score_vs_best")] == 0 and f[1][i("clip_score_vs_best")] == pytest.approx(
        -0.2
    )
    assert f[1][i("min_word_u")] == pytest.approx(-3.0) and f[1][i("n_flagged")] == 1
    lone = image_features([_rep(0.7, -0.001)], unit=-EPS)[0]
    assert lone[i("clip_score_vs_best")] == lone[i("clip_score_z")] == 0
    with pytest.raises(ValueError, match="unit"):
        image_features([_rep(0.7, 0.0)], unit=0)


def test_fit_card_round_trip_and_stop_level(tmp_path):
    groups, labels = _pool()
    ver = fit_verifier(groups, labels, unit=-EPS, false_accept_rate=0.1, threshold=EPS)
    assert ver.stats["cv_auc"] > 0.85
    assert ver.select_by in ("p_right", "clip_score")
    # at most 10% of the wrong calibration images reach the stop level (on CV predictions,
    # so check on the fitted model with a margin)
    probs = [p for g in groups for p in ver.probabilities(g)]
    y = [v for ls in labels for v in ls]
    wrong = [p for p, v in zip(probs, y) if not v]
    assert np.mean([p >= ver.stop_level for p in wrong]) <= 0.2
    path = ver.save(tmp_path / "card.json")
    back = Verifier.load(path)
    assert back.probabilities(groups[0]) == ver.probabilities(groups[0])
    assert json.loads(path.read_text())["kind"] == "clip4dm-verifier"


def test_bad_cards_and_labels_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Verifier.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "something-else"}')
    with pytest.raises(InputError, match="not a clip4dm verifier card"):
        Verifier.load(bad)
    groups, labels = _pool(10)
    with pytest.raises(ValueError, match="both right and wrong"):
        fit_verifier(groups, [[True] * 4 for _ in groups], unit=-EPS)


def test_detector_cosine_matches_the_scored_cosine(tiny_open_clip_dir):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    x = torch.rand(3, 3, 32, 32)
    caps = ["a red circle", "a blue square left of a red circle"]
    c = det.cosine(x, caps)
    assert c.shape == (3, 2)
    assert torch.allclose(c[:, 1], det.score(x, [caps[1]] * 3).cosine, atol=1e-6)


@pytest.fixture(scope="module")
def sd(sd_tokenizers):
    return tp.build("sd", sd_tokenizers["sd"])


def _card(det, stop_level, select_by="p_right"):
    groups, labels = _pool()
    ver = fit_verifier(groups, labels, unit=-det.config.threshold, threshold=det.config.threshold)
    ver.stop_level = stop_level
    ver.select_by = select_by
    return ver


@pytest.mark.parametrize("select_by", ["p_right", "clip_score"])
def test_the_loop_keeps_what_the_card_selects(sd, tiny_open_clip_dir, select_by):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=EPS)
    ver = _card(det, 2.0, select_by)
    fb = FeedbackPipeline(sd, det, LoopConfig(strategy="best_of_n", max_images=4), verifier=ver)
    h = fb("a red circle", output_type="pt", **tp.call_kwargs("sd")).history[0]
    rec = h.rounds[0]
    assert len(rec.p_right) == 4 and rec.p_right == ver.probabilities(rec.reports)
    want = ver.select(rec.reports, rec.p_right)
    assert h.best == (0, want)
    key = rec.p_right if select_by == "p_right" else [r.clip_score for r in rec.reports]
    assert key[want] == max(key)


def test_the_verifiers_stop_rule(sd, tiny_open_clip_dir):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=EPS)
    kw = tp.call_kwargs("sd")
    cfg = LoopConfig(strategy="resample", max_images=4)
    # a level every image reaches: stop after the first image, "verified"
    h = FeedbackPipeline(sd, det, cfg, verifier=_card(det, 0.0))("a red circle", **kw).history[0]
    assert h.stopped == "verified" and h.num_images == 1
    # a level no image reaches: the whole budget, even where nothing is flagged
    h = FeedbackPipeline(sd, det, cfg, verifier=_card(det, 1.01))("a red circle", **kw).history[0]
    assert h.stopped == "max_images" and h.num_images == 4


def test_a_card_fitted_at_another_eps_is_refused(sd, tiny_open_clip_dir):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=EPS)
    ver = _card(det, 0.5)
    ver.threshold = -0.005
    with pytest.raises(ValueError, match="fitted at eps -0.005 but the detector uses -0.002"):
        FeedbackPipeline(sd, det, LoopConfig(), verifier=ver)


def test_without_a_card_the_loop_says_so_once(sd, tiny_open_clip_dir, caplog):
    import generation.verifier as gv

    gv._say_once.cache_clear()  # said once per process: say it again here
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    with caplog.at_level("WARNING", logger="generation.verifier"):
        FeedbackPipeline(sd, det, LoopConfig())
        FeedbackPipeline(sd, det, LoopConfig())
    said = [r for r in caplog.records if "no verifier card" in r.getMessage()]
    assert len(said) == 1 and said[0].name == "generation.verifier"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FeedbackPipeline(sd, det, LoopConfig())  # said once: no second warning


def test_calibrate_fits_and_writes_a_card(tmp_path, tiny_open_clip_dir, capsys):
    """`clip4dm calibrate --verifier` on a labels.jsonl of images grouped by prompt."""
    from PIL import Image

    from generation.cli import main

    rng = np.random.default_rng(0)
    rows = []
    for g in range(12):
        for k in range(4):
            name = f"{g}_{k}.png"
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(tmp_path / name)
            rows.append({"image": name, "caption": f"a red circle number {g}", "right": k < 2})
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = tmp_path / "verifier.json"
    argv = ["calibrate", "--data", str(data), "--model", str(tiny_open_clip_dir)]
    assert main(argv + ["--verifier", str(card), "--threshold", "-0.001"]) == 0
    out = capsys.readouterr().out
    assert "verifier: cross-validated AUC" in out and "selects by" in out
    ver = Verifier.load(card)
    assert ver.threshold == -0.001 and ver.stats["n_prompts"] == 12 and ver.stats["n_images"] == 48
    assert main(argv + ["--verifier", str(card), "--false-accept", "2"]) == 2
    # --fixes: what each fix bought over a fresh sample goes into the card
    trials = tmp_path / "fixes.jsonl"
    rows = _trials("reweight", "object", [(0, 1), (0, 0), (0, 1)])
    rows.append({"fix": None, "kind": None})  # nothing flagged: no trial
    trials.write_text("".join(json.dumps(r) + "\n" for r in rows))
    flags = ["--verifier", str(card), "--threshold", "-0.001", "--fixes", str(trials)]
    assert main(argv + flags) == 0
    out = capsys.readouterr().out
    assert "fix reweight, object word flagged: -66.7 points" in out and "fresh sample" in out
    assert fix_pays(Verifier.load(card), "reweight", "object") is False
    assert main(argv + ["--fixes", str(trials)]) == 2  # no card to write them into
    assert "give --verifier" in capsys.readouterr().err


def test_best_of_n_reports_its_budget_spent_not_an_early_stop(sd, tiny_open_clip_dir):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=EPS)
    fb = FeedbackPipeline(sd, det, LoopConfig("best_of_n", max_images=3), verifier=_card(det, 0.0))
    h = fb("a red circle", **tp.call_kwargs("sd")).history[0]
    assert h.num_images == 3 and h.stopped == "max_images"


def test_each_streamed_round_carries_its_p_right_and_the_best_so_far(sd, tiny_open_clip_dir):
    from generation import PromptHistory

    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=EPS)
    fb = FeedbackPipeline(sd, det, LoopConfig("resample", max_images=3), verifier=_card(det, 2.0))
    items = list(fb.stream("a red circle", **tp.call_kwargs("sd")))
    events, (h,) = items[:-1], items[-1:]
    assert isinstance(h, PromptHistory) and len(events) == 3
    for e in events:
        assert len(e.record.p_right) == len(e.record.seeds)  # set before the event is yielded
    assert events[-1].best == h.best


# --- fixes only where they pay (generation.fixes, generation.verifier.gate) ---------------


def _trials(fix, kind, pairs):
    return [{"fix": fix, "kind": kind, "fixed_right": a, "fresh_right": b} for a, b in pairs]


def test_fix_gains_are_paired_differences_with_an_interval():
    from generation.fixes import fit_fix_gains

    rows = _trials("reweight", "relation", [(1, 0)] * 6 + [(0, 0)] * 4) + _trials(
        "reweight", "object", [(0, 1)] * 3 + [(1, 1)] * 7
    )
    g = fit_fix_gains(rows)
    rel, obj = g["reweight"]["relation"], g["reweight"]["object"]
    assert rel["gain"] == pytest.approx(0.6) and rel["n"] == 10
    assert obj["gain"] == pytest.approx(-0.3) and obj["n"] == 10
    assert rel["ci"][0] <= 0.6 <= rel["ci"][1] and obj["ci"][0] <= -0.3 <= obj["ci"][1]
    assert rel["ci"][0] > 0 >= obj["ci"][1]  # a clear gain: its interval excludes 0
    with pytest.raises(InputError, match="kind must be one of"):
        fit_fix_gains(_trials("reweight", "colour", [(1, 0)]))
    with pytest.raises(InputError, match="needs fix, kind, fixed_right and fresh_right"):
        fit_fix_gains([{"fix": "reweight", "kind": "object"}])


def test_a_card_round_trips_its_fix_gains_and_says_where_a_fix_pays(tmp_path):
    from generation.fixes import fit_fix_gains

    groups, labels = _pool()
    ver = fit_verifier(groups, labels, unit=-EPS, threshold=EPS)
    gains = fit_fix_gains(
        _trials("reweight", "relation", [(1, 0), (1, 1)]) + _trials("reweight", "object", [(0, 1)])
    )
    set_fix_gains(ver, gains)
    path = ver.save(tmp_path / "card.json")
    back = Verifier.load(path)
    assert fix_gains(back) == gains and back.extras == ver.extras
    assert json.loads(path.read_text())["fix_gains"] == gains  # the card's JSON key
    assert fix_pays(back, "reweight", "relation") is True
    assert fix_pays(back, "reweight", "object") is False
    assert fix_pays(back, "phrase_guidance", "object") is None  # never measured


def test_flagged_kind_relation_or_object():
    from generation.verifier import flagged_kind

    def rep(caption, scores, eps=EPS):
        words, pos = [], 0
        for w, s in zip(caption.split(), scores):
            start = caption.index(w, pos)
            pos = start + len(w)
            words.append(WordScore(w, start, pos, s, s < eps))
        return MisalignmentReport(caption, words, 0.2, 0.5, 0.0, 0.0)

    two = "a red circle left of a blue square"
    assert flagged_kind(rep(two, [0, -0.003, 0, -0.009, 0, 0, 0, 0]), two) == "relation"
    assert flagged_kind(rep(two, [0, -0.009, 0, -0.003, 0, 0, 0, 0]), two) == "object"
    one = "a red circle on the left"
    assert flagged_kind(rep(one, [0, 0, 0, 0, 0, -0.01]), one) == "relation"  # a spatial word
    assert flagged_kind(rep(one, [0.001] * 6), one) is None


@pytest.mark.parametrize(
    "gain, gate_fixes, want",
    [(-0.1, True, "resample"), (0.1, True, "reweight"), (-0.1, False, "reweight")],
)
def test_the_loop_applies_a_fix_only_where_the_card_measured_a_gain(
    sd, tiny_open_clip_dir, gain, gate_fixes, want, caplog
):
    # eps ~0: every word against the image is flagged (at least the lowest), so the reweight
    # fix always has work
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=-1e-6)
    ver = _card(det, 1.01)  # a stop level no image reaches: round 1 always happens
    cell = {"gain": gain, "ci": [gain, gain], "n": 20}
    set_fix_gains(ver, {"reweight": {"relation": cell, "object": cell}})
    kw = tp.call_kwargs("sd")
    prompt = "a red circle left of a blue square"
    cfg = LoopConfig("reweight", max_images=2, max_rounds=2, gate_fixes=gate_fixes)
    with caplog.at_level("WARNING", logger="generation.verifier"):
        fb = FeedbackPipeline(sd, det, cfg, verifier=ver)
    told = [r for r in caplog.records if "its rounds re-sample" in r.getMessage()]
    assert len(told) == (want == "resample")  # said when the card gates the fix off
    h = fb(prompt, **kw).history[0]
    r1 = h.rounds[1]
    assert r1.fix == want
    fresh = FeedbackPipeline(
        sd, det, LoopConfig("resample", max_images=2, max_rounds=2), verifier=ver
    )
    f1 = fresh(prompt, **kw).history[0].rounds[1]
    assert r1.seeds == f1.seeds  # reseed: the fix and the fresh sample share the seed
    from generation.figures import prompt_cards

    cards, _ = prompt_cards(h)
    if want == "resample":
        assert r1.extra["gated"] == "reweight" and r1.extra["measured_gain"] == gain
        assert torch.equal(r1.images, f1.images)  # a fresh sample, bit for bit
        assert r1.weights == [1.0] * len(r1.weights)
        kind = r1.extra["kind"]
        article = {"object": "an", "relation": "a"}[kind]
        assert f"resample (not reweight: no gain measured for {article} {kind} word)" in cards
    else:
        assert "gated" not in r1.extra and max(r1.weights) > 1.0
        assert not torch.equal(r1.images, f1.images)
        assert "round 1 · reweight · seed" in cards


@pytest.mark.slow
def test_measure_fixes_writes_trials_as_it_goes_resumes_and_fills_the_card(tmp_path):
    """`shapesworld.build.measure_fixes` on the shipped pipeline: one trial per (prompt, fix)
    line, a rerun makes nothing again, and the card gets `fit_fix_gains` of the trials."""
    import shutil

    from generation.fixes import fit_fix_gains
    from shapesworld.build.measure_fixes import MeasureFixesConfig, main
    from shapesworld.pipelines import loop_verifier_path

    card = tmp_path / "verifier.json"
    shutil.copy(loop_verifier_path(), card)
    before_gains = {k: v for k, v in fix_gains(Verifier.load(card)).items() if k != "reweight"}
    cfg = MeasureFixesConfig(
        output_dir=str(tmp_path / "fx"), verifier=str(card), prompts=2, strategies=["reweight"]
    )
    out = main(cfg)
    lines = [json.loads(x) for x in (tmp_path / "fx" / "fixes.jsonl").read_text().splitlines()]
    assert [(r["group"], r["strategy"]) for r in lines] == [(0, "reweight"), (1, "reweight")]
    trials = [r for r in lines if r["fix"] is not None]
    assert trials and out["trials"] == len(trials)
    assert all(r["kind"] in FIX_KINDS for r in trials)
    # the measured fix's gains replace its own; the card's other fixes keep theirs
    measured = fit_fix_gains(trials)
    assert measured == out["gains"]
    assert fix_gains(Verifier.load(card)) == {**before_gains, **measured}
    before = (tmp_path / "fx" / "fixes.jsonl").read_text()
    assert main(cfg)["trials"] == len(trials)  # resumed: nothing made again
    assert (tmp_path / "fx" / "fixes.jsonl").read_text() == before
    with pytest.raises(ValueError, match="fix strategies"):
        MeasureFixesConfig(strategies=["resample"])


def test_phrase_guidance_goes_on_after_a_gated_round(sd, tiny_open_clip_dir):
    """A gated round is a fresh sample without phrase weights; the strategy's next round
    starts its phrase weights again instead of reading the sample's (it raised IndexError)."""
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=-1e-6)
    ver = _card(det, 1.01)
    set_fix_gains(
        ver,
        {
            "phrase_guidance": {k: {"gain": -0.1, "ci": [-0.1, -0.1], "n": 20} for k in FIX_KINDS},
            "reweight": {k: {"gain": -0.1, "ci": [-0.1, -0.1], "n": 20} for k in FIX_KINDS},
        },
    )
    cfg = LoopConfig("phrase_guidance", max_images=3, max_rounds=3)
    h = FeedbackPipeline(sd, det, cfg, verifier=ver)(
        "a red circle left of a blue square", **tp.call_kwargs("sd")
    ).history[0]
    assert [r.fix for r in h.rounds] == ["plain", "resample", "resample"]
    assert [r.extra.get("gated") for r in h.rounds[1:]] == ["phrase_guidance"] * 2
    set_fix_gains(
        ver,
        {
            **fix_gains(ver),
            "phrase_guidance": {k: {"gain": 0.1, "ci": [0.1, 0.1], "n": 20} for k in FIX_KINDS},
        },
    )
    h = FeedbackPipeline(sd, det, cfg, verifier=ver)(
        "a red circle left of a blue square", **tp.call_kwargs("sd")
    ).history[0]
    assert [r.fix for r in h.rounds] == ["plain", "phrase_guidance", "phrase_guidance"]
