"""Every pipeline family the loop wraps (SD 1.x, SDXL, SD3, FLUX.1, PixArt-Σ, Sana), each a
genuine diffusers pipeline built tiny from configs with random weights (tests/tiny_pipelines.py):

- the adapter is picked by class and components;
- weight 1 through the adapter's embeddings reproduces the plain call bit for bit;
- a raised weight changes each encoder's output only at the word's positions;
- best_of_n, resample and reweight run, and round 0 is the plain call bit for bit;
- every refused combination is a ValueError before any image;
- a prompt past CLIP's window but inside T5's is handled visibly.
"""

from __future__ import annotations

import pytest
import tiny_pipelines as tp
import torch

from feedback import MisalignmentDetector
from generation import FeedbackPipeline, LoopConfig, adapter_for

PROMPT = "A small red circle left of a big blue square"
FAMILIES = tp.FAMILIES
MODERN = ("sd3", "flux", "pixart", "sana")


@pytest.fixture(scope="module")
def pipes(sd_tokenizers):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = tp.build(family, sd_tokenizers["sd"], sd_tokenizers["sdxl_2"])
        return cache[family]

    return get


@pytest.fixture(scope="module")
def detector(tiny_open_clip_dir):
    # most-negative: some word is always flagged, so reweight always has a next round
    return MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), mode="most-negative")


def _words(detector, prompt=PROMPT):
    return detector.score(torch.rand(1, 3, 32, 32), [prompt]).words[0]


def _plain(pipe, kw, seeds, prompt=PROMPT):
    return pipe(
        prompt=prompt,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        num_images_per_prompt=len(seeds),
        output_type="pt",
        **kw,
    ).images


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_is_picked_by_class_and_weight_one_is_the_plain_call(family, pipes, detector):
    pipe = pipes(family)
    ad = adapter_for(pipe)
    assert ad.family == family
    kw = tp.call_kwargs(family)
    words = _words(detector)
    emb = ad.encode(PROMPT, words, [1.0] * len(words), kw)
    assert "prompt_embeds" in emb
    a = _plain(pipe, kw, [1])
    b = pipe(**emb, generator=[torch.Generator().manual_seed(1)], output_type="pt", **kw).images
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_raised_weight_changes_each_encoder_only_at_the_words_positions(family, pipes, detector):
    pipe = pipes(family)
    ad = adapter_for(pipe)
    kw = tp.call_kwargs(family)
    words = _words(detector)
    target = [w.text for w in words].index("blue")
    weights = [1.0] * len(words)
    weights[target] = 1.5
    plain = ad.encode(PROMPT, words, None, kw)["prompt_embeds"]
    up = ad.encode(PROMPT, words, weights, kw)
    diff = up["prompt_embeds"] != plain
    expected = torch.zeros_like(diff)
    for slot in ad.slots(kw):
        pos = slot.align(PROMPT, words).positions[target]
        assert pos, f"{slot.name}: 'blue' maps to no token"
        # the positions hold the word's own tokens in what the pipeline actually tokenizes
        ids = slot.tokenizer(
            slot.prefix + (PROMPT.lower() if slot.lowercase else PROMPT),
            padding="max_length",
            max_length=slot.max_length,
            truncation=True,
        )["input_ids"]
        if slot.keep is not None:
            ids = [ids[i] for i in slot.keep]
        assert "blue" in slot.tokenizer.decode([ids[p] for p in pos]).lower()
        feat = slice(*slot.features) if slot.features else slice(None)
        for p in pos:
            expected[:, slot.seq_offset + p, feat] = True
    assert torch.equal(diff, expected)
    # pooled embeddings are left as the encoder made them
    for k in ("pooled_prompt_embeds",):
        if k in up:
            assert torch.equal(up[k], ad.encode(PROMPT, words, None, kw)[k])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", ["best_of_n", "resample", "reweight"])
def test_strategies_run_and_round_zero_is_the_plain_call(family, strategy, pipes, detector):
    pipe = pipes(family)
    kw = tp.call_kwargs(family)
    cfg = LoopConfig(strategy=strategy, max_images=2, samples_per_round=1)
    out = FeedbackPipeline(pipe, detector, cfg)(PROMPT, output_type="pt", **kw)
    h = out.history[0]
    assert h.num_images == 2
    r0 = h.rounds[0]
    assert torch.equal(r0.images, _plain(pipe, kw, r0.seeds).float())
    if strategy == "reweight":
        r1 = h.rounds[1]
        assert r1.fix == "reweight" and max(r1.weights) > 1
        # the weighted round is the weighted embeddings' call, bit for bit
        fb = FeedbackPipeline(pipe, detector, cfg)
        emb = fb.encode(PROMPT, r0.reports[0].words, r1.weights, **kw)
        again = pipe(
            **emb,
            generator=[torch.Generator().manual_seed(s) for s in r1.seeds],
            output_type="pt",
            **kw,
        ).images
        assert torch.equal(r1.images, again.float())
        assert not torch.equal(r1.images, _plain(pipe, kw, r1.seeds).float())
    else:
        assert [r.fix for r in h.rounds][:1] == ["plain"]
        assert all(r.fix in ("plain", "resample") for r in h.rounds)


def _count_denoiser_calls(pipe):
    mod = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    calls = []
    orig = mod.forward

    def fwd(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    mod.forward = fwd
    return mod, calls


@pytest.mark.parametrize("family", MODERN)
@pytest.mark.parametrize(
    "strategy, message",
    [
        ("phrase_guidance", r"phrase guidance"),
        ("attend_and_excite", r"Attend-and-Excite exists for SD 1.x/2.x UNets only"),
    ],
)
def test_refused_combinations_are_value_errors_before_any_image(
    family, strategy, message, pipes, detector
):
    pipe = pipes(family)
    mod, calls = _count_denoiser_calls(pipe)
    try:
        with pytest.raises(ValueError, match=message):
            FeedbackPipeline(pipe, detector, LoopConfig(strategy=strategy))(
                PROMPT, **tp.call_kwargs(family)
            )
    finally:
        del mod.forward
    assert calls == []


def test_flux_refusal_names_guidance_distillation(pipes, detector):
    flux = pipes("flux")
    assert adapter_for(flux).family == "flux"  # not SDXL, though it has text_encoder_2
    with pytest.raises(ValueError, match=r"guidance-distilled.*true_cfg_scale > 1"):
        FeedbackPipeline(flux, detector, LoopConfig(strategy="phrase_guidance"))


def test_phrase_guidance_needs_cfg_on_sd(pipes, detector):
    sd = pipes("sd")
    fb = FeedbackPipeline(sd, detector, LoopConfig(strategy="phrase_guidance"))
    with pytest.raises(ValueError, match="guidance_scale > 1"):
        fb(PROMPT, **{**tp.call_kwargs("sd"), "guidance_scale": 1.0})


def test_adapter_override_and_generic_fallback(pipes, detector):
    sd = pipes("sd")
    # An explicit adapter overrides the choice: the generic one takes prompt strings only.
    fb = FeedbackPipeline(
        sd, detector, LoopConfig(strategy="best_of_n", max_images=2), adapter="generic"
    )
    assert fb.adapter.family == "generic"
    out = fb(PROMPT, output_type="pt", **tp.call_kwargs("sd"))
    assert torch.equal(out.history[0].rounds[0].images, _plain(sd, tp.call_kwargs("sd"), [0, 1]))
    with pytest.raises(ValueError, match="prompt strings only"):
        FeedbackPipeline(sd, detector, LoopConfig(strategy="reweight"), adapter="generic")
    with pytest.raises(ValueError, match="unknown adapter"):
        adapter_for(sd, "sd4")
    with pytest.raises(ValueError, match="unsupported pipeline"):
        adapter_for(object())


LONG = (
    "a small red circle left of a big blue square, "
    + "with a thin green border and soft shadows, " * 9
    + "and a yellow star"
)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_prompt_past_clip_window_inside_t5_is_visible_and_weighted(family, pipes, detector):
    pipe = pipes(family)
    kw = tp.call_kwargs(family, max_sequence_length=128)
    ad = adapter_for(pipe)
    words = _words(detector, LONG)
    star = [w.text for w in words].index("star")
    fb = FeedbackPipeline(pipe, detector, LoopConfig(strategy="reweight", max_images=2))
    cut = fb.windows_cut(LONG, kw)
    assert "t5" not in cut  # T5 reads 128 tokens: it sees every word
    if family == "sd3":
        assert "star" in cut["clip_l"] and "star" in cut["clip_g"]
        with pytest.warns(UserWarning, match=r"clip_l reads 75 tokens.*t5 sees them"):
            out = fb(LONG, output_type="pt", **kw)
        assert "clip_l" in out.history[0].rounds[0].truncated
    # a weight on a word past CLIP's window reaches T5's positions (and only those)
    weights = [1.0] * len(words)
    weights[star] = 1.5
    plain = ad.encode(LONG, words, None, kw)["prompt_embeds"]
    changed = (ad.encode(LONG, words, weights, kw)["prompt_embeds"] != plain).any(-1)[0]
    t5 = next(s for s in ad.slots(kw) if s.name == "t5")
    want = [t5.seq_offset + p for p in t5.align(LONG, words).positions[star]]
    assert want and changed.nonzero().flatten().tolist() == want
    assert min(want) >= (77 if family == "sd3" else 0)


def test_sana_instruction_prefix_shifts_positions_exactly(pipes, detector):
    """With Sana's default complex_human_instruction the prompt's tokens sit after the
    instruction, and the pipeline keeps only the last positions: weight 1 still reproduces
    the plain call and the raised weight lands on the word's tokens."""
    pipe = pipes("sana")
    kw = tp.call_kwargs("sana")
    del kw["complex_human_instruction"]  # the pipeline's default instruction
    ad = adapter_for(pipe)
    slot = ad.slots(kw)[0]
    assert slot.prefix and slot.keep[0] == 0
    words = _words(detector)
    assert torch.equal(
        _plain(pipe, kw, [3]),
        pipe(
            **ad.encode(PROMPT, words, None, kw),
            generator=[torch.Generator().manual_seed(3)],
            output_type="pt",
            **kw,
        ).images,
    )
    target = [w.text for w in words].index("red")
    weights = [1.0] * len(words)
    weights[target] = 2.0
    plain = ad.encode(PROMPT, words, None, kw)["prompt_embeds"]
    changed = (ad.encode(PROMPT, words, weights, kw)["prompt_embeds"] != plain).any(-1)[0]
    pos = slot.align(PROMPT, words).positions[target]
    assert changed.nonzero().flatten().tolist() == pos
    ids = slot.tokenizer(
        slot.prefix + PROMPT.lower(),
        padding="max_length",
        max_length=slot.max_length,
        truncation=True,
    )["input_ids"]
    kept = [ids[i] for i in slot.keep]
    assert slot.tokenizer.decode([kept[p] for p in pos]).strip() == "red"


def test_real_unigram_tokenizer_in_the_t5_slot(tmp_path, sd_tokenizers, detector):
    """A sentencepiece-style Unigram fast tokenizer (trained here on ShapesWorld captions) as
    PixArt's and FLUX's T5 tokenizer: offsets map words onto its pieces, "</s>" is the only
    special token, and round 0 / weight 1 are still the plain call."""
    import numpy as np

    from shapesworld import describe, sample_scene

    rng = np.random.default_rng(0)
    caps = [describe(sample_scene(rng), rng).text for _ in range(400)]
    uni = tp.unigram_tokenizer(tmp_path / "uni", caps)
    assert uni.pad_token_id == 0 and uni("a red circle")["input_ids"][-1] == uni.eos_token_id
    for family in ("pixart", "flux"):
        pipe = tp.build(family, sd_tokenizers["sd"], t5_tok=uni, t5_vocab=len(uni))
        kw = tp.call_kwargs(family)
        ad = adapter_for(pipe)
        words = _words(detector)
        slot = next(s for s in ad.slots(kw) if s.name == "t5")
        al = slot.align(PROMPT, words)
        ids = uni(PROMPT.lower() if slot.lowercase else PROMPT)["input_ids"]
        for w, pos in zip(al.words, al.positions):
            assert pos, w.text
            assert uni.decode([ids[p] for p in pos]).strip().lower() == w.text.lower()
        target = [w.text for w in words].index("square")
        weights = [1.0] * len(words)
        weights[target] = 1.5
        plain = ad.encode(PROMPT, words, None, kw)["prompt_embeds"]
        changed = (ad.encode(PROMPT, words, weights, kw)["prompt_embeds"] != plain).any(-1)[0]
        assert changed.nonzero().flatten().tolist() == al.positions[target]
        out = FeedbackPipeline(pipe, detector, LoopConfig(strategy="reweight", max_images=2))(
            PROMPT, output_type="pt", **kw
        )
        r0 = out.history[0].rounds[0]
        assert torch.equal(r0.images, _plain(pipe, kw, r0.seeds).float())


@pytest.mark.parametrize("family", FAMILIES)
def test_token_rewards_reach_every_encoder_of_every_family(family, pipes, detector):
    """FeedbackReward's word rewards land on each encoder's own positions of each word (the
    reward object never assumes a CLIP tokenizer)."""
    from feedback import FeedbackReward

    kw = tp.call_kwargs(family)
    ad = adapter_for(pipes(family))
    rewards, info = FeedbackReward(detector)(torch.rand(2, 3, 32, 32), [PROMPT, "a blue cross"])
    per_slot = ad.token_rewards(info, kw)
    slots = {s.name: s for s in ad.slots(kw)}
    assert set(per_slot) == set(slots)
    for name, tr in per_slot.items():
        s = slots[name]
        assert tr.rewards.shape == (2, s.max_length if s.keep is None else len(s.keep))
        for b, prompt in enumerate(info.output.captions):
            al = s.align(prompt, info.output.words[b])
            for i, pos in enumerate(al.positions):
                for p in pos:
                    assert tr.mask[b, p]
                    if len(pos) and sum(p in q for q in al.positions) == 1:
                        assert tr.rewards[b, p] == pytest.approx(float(info.word_rewards[b, i]))
            covered = {p for pos in al.positions for p in pos}
            assert set(tr.mask[b].nonzero().flatten().tolist()) == covered


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_generate_loads_any_family_from_a_saved_folder(family, pipes, tmp_path, capsys):
    """`clip4dm generate --pipeline DIR` on a folder diffusers' save_pretrained wrote: the
    family's class comes from model_index.json and its adapter is picked."""
    import json

    from generation.cli import main

    folder = tmp_path / family
    pipes(family).save_pretrained(folder)
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\n")
    out = tmp_path / "out"
    extra = tp.CALL[family]
    code = main(
        ["generate", "--pipeline", str(folder), "--prompts", str(prompts), "--out", str(out)]
        + ["--budget", "2", "--steps", "2", "--guidance", "3", "--strategy", "reweight"]
        + ["--model", "shapes-tiny-gen2"]  # the testbed's loop detector (no card names one)
        + ["--mode", "most-negative"]  # always a word flagged
        + ["--height", "32", "--width", "32"]
        + [f"--pipeline-arg={k}={json.dumps(v)}" for k, v in extra.items() if k != "guidance_scale"]
    )
    assert code == 0, capsys.readouterr().err
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert row["adapter"]["family"] == family
    assert [r["fix"] for r in row["rounds"]] == ["plain", "reweight"]


def test_a_new_strategy_is_one_registered_class(pipes, detector):
    """Adding a strategy is one module with `@register` (here, a class in this test): it is
    then a valid LoopConfig.strategy, a CLI choice, and runs through the loop's budget, seeds,
    scoring, selection and stop rule unchanged."""
    from generation import STRATEGIES, RoundPlan, Strategy, register
    from generation.cli import build_parser

    @register
    class HalveFlagged(Strategy):
        name = "halve_flagged"  # lower the flagged words' weights instead of raising them
        requires = ("weights",)

        def next(self, state):
            w = [
                x / 2 if v.misaligned else x for x, v in zip(state.last.weights, state.chosen.words)
            ]
            return RoundPlan("halve_flagged", weights=w)

    try:
        p = build_parser()
        sub = p._subparsers._group_actions[0].choices["generate"]
        (action,) = [a for a in sub._actions if a.dest == "strategy"]
        assert "halve_flagged" in action.choices
        fb = FeedbackPipeline(pipes("sd3"), detector, LoopConfig("halve_flagged", max_images=2))
        h = fb(PROMPT, output_type="pt", **tp.call_kwargs("sd3")).history[0]
        assert [r.fix for r in h.rounds] == ["plain", "halve_flagged"]
        assert min(h.rounds[1].weights) == 0.5
    finally:
        STRATEGIES.pop("halve_flagged")


INPAINTING = ("sd", "sdxl", "flux")


@pytest.mark.parametrize("family", FAMILIES)
def test_region_fix_inpaints_the_flagged_box_or_is_refused(family, pipes, detector):
    """region_fix regenerates the flagged word's box with the family's inpainting pipeline
    (AutoPipelineForInpainting.from_pipe, same modules); a family without one is refused before
    any image."""
    pipe, kw = pipes(family), tp.call_kwargs(family)
    cfg = LoopConfig(
        strategy="region_fix",
        max_images=2,
        max_rounds=2,
        stop_when_aligned=False,
        gate_fixes=False,
    )
    fb = FeedbackPipeline(pipe, detector, cfg, verifier=None)
    if family == "sd3":
        # diffusers' SD3 inpainting pipeline exists but wants a 16-channel transformer (the
        # real SD3's); this tiny one has 4: diffusers' own ValueError reaches the user
        with pytest.raises(ValueError, match="input channels"):
            fb(PROMPT, **kw)
        return
    if family not in INPAINTING:
        with pytest.raises(ValueError, match="needs an inpainting pipeline"):
            fb(PROMPT, **kw)
        return
    h = fb(PROMPT, output_type="pt", **kw).history[0]
    first, fix = h.rounds
    assert fix.fix == "region_fix" and fix.extra["reason"] in ("attribute", "relation", "missing")
    x0, y0, x1, y1 = (int(v) for v in fix.extra["box"])
    assert fix.images.shape == first.images.shape and (x1 - x0) * (y1 - y0) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_preview_runs_on_every_family(family, pipes, detector):
    """Few-step previews of 5 seeds, the best 2 finished at full steps, within 30 steps."""
    pipe = pipes(family)
    kw = {**tp.call_kwargs(family), "num_inference_steps": 10}
    cfg = LoopConfig(strategy="preview", max_steps=30, stop_when_aligned=False)
    h = FeedbackPipeline(pipe, detector, cfg, verifier=None)(PROMPT, **kw).history[0]
    assert [r.fix for r in h.rounds] == ["preview", "finish"]
    assert len(h.rounds[0].seeds) == 5 and h.rounds[0].steps == 10 and h.num_steps == 30
    assert set(h.rounds[1].seeds) <= set(h.rounds[0].seeds) and h.best[0] == 1
