"""The feedback loop around genuine diffusers pipelines (SD 1.x and SDXL classes) built tiny
with random weights inside the test -- no mocks."""

from __future__ import annotations

import pytest
import tiny_pipelines as tp
import torch

from feedback import MisalignmentDetector, align_words
from feedback.backends import OpenClipBackend
from generation import (
    FeedbackPipeline,
    LoopConfig,
    PhraseGuidance,
    Reweight,
    to_a1111,
    to_compel,
    token_indices,
)
from generation.guidance import phrase_guidance
from generation.phrases import raise_phrase_weights, split_phrases, word_phrases
from generation.selection import rank_key

PROMPT = "a small red circle, left of a big blue astronautically square..."


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=32,
    ).eval()


@pytest.fixture(scope="module")
def tokenizer(sd_tokenizers):
    return sd_tokenizers["sd"]


@pytest.fixture(scope="module")
def sd_pipe(tokenizer):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    unet = tp.unet(cross_attention_dim=32, attention_head_dim=8)
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=tp.clip_text(32, layers=2),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_pipe(sd_tokenizers):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tok, tok2 = sd_tokenizers["sd"], sd_tokenizers["sdxl_2"]
    unet = tp.unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,  # 6 * 8 + pooled width 32
        cross_attention_dim=64,  # 32 + 32: the two encoders' outputs concatenated
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=tp.clip_text(32, layers=2),
        text_encoder_2=tp.clip_text(32, projection=True, layers=2, seed=1),
        tokenizer=tok,
        tokenizer_2=tok2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def detector(tiny_open_clip_dir):
    return MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))


GEN = dict(num_inference_steps=2, guidance_scale=3.0, height=32, width=32)


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_weight_one_reproduces_the_plain_call(which, sd_pipe, sdxl_pipe, detector):
    pipe = sd_pipe if which == "sd" else sdxl_pipe
    fb = FeedbackPipeline(pipe, detector)
    words = detector.score(torch.rand(1, 3, 32, 32), [PROMPT]).words[0]
    kw = fb.encode(PROMPT, words, [1.0] * len(words))
    a = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(3), output_type="pt", **GEN)
    b = pipe(**kw, generator=torch.Generator().manual_seed(3), output_type="pt", **GEN)
    assert torch.equal(a.images, b.images)


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_weights_change_only_the_mapped_positions(which, sd_pipe, sdxl_pipe, detector):
    pipe = sd_pipe if which == "sd" else sdxl_pipe
    fb = FeedbackPipeline(pipe, detector)
    words = detector.score(torch.rand(1, 3, 32, 32), [PROMPT]).words[0]
    texts = [w.text for w in words]
    target = texts.index("astronautically")
    weights = [1.0] * len(words)
    weights[target] = 1.5
    plain = fb.encode(PROMPT)["prompt_embeds"]
    kw = fb.encode(PROMPT, words, weights)
    changed = (kw["prompt_embeds"] != plain).any(dim=-1)[0].nonzero().flatten().tolist()
    want = align_words(PROMPT, pipe.tokenizer, words=words).positions[target]
    assert len(want) > 1 and changed == want  # a multi-BPE word: all its tokens, nothing else
    ratio = kw["prompt_embeds"][0, want] / plain[0, want]
    assert torch.allclose(ratio[plain[0, want] != 0], torch.tensor(1.5))
    if which == "sdxl":  # both encoders' blocks are weighted; pooled embeds untouched
        assert (kw["prompt_embeds"][0, want, :32] != plain[0, want, :32]).any()
        assert (kw["prompt_embeds"][0, want, 32:] != plain[0, want, 32:]).any()
        assert torch.equal(kw["pooled_prompt_embeds"], fb.encode(PROMPT)["pooled_prompt_embeds"])
    # the same weights as syntax for other tools
    assert "(astronautically:1.5)" in to_a1111(PROMPT, words, weights)
    assert "(astronautically)1.5" in to_compel(PROMPT, words, weights)


def test_loop_stops_when_nothing_is_misaligned(sd_pipe, tiny_open_clip_dir):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=-1e9)
    fb = FeedbackPipeline(sd_pipe, det, LoopConfig(strategy="reweight", max_images=4))
    out = fb(PROMPT, **GEN)
    h = out.history[0]
    assert h.stopped == "nothing_flagged" and len(h.rounds) == 1 and h.num_images == 1
    assert not h.best_report.misaligned_words


def test_reweight_loop_raises_flagged_words_and_keeps_the_best(sd_pipe, tiny_open_clip_dir):
    # most-negative mode always flags one word, so the loop uses its whole budget
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), mode="most-negative")
    cfg = LoopConfig(strategy=Reweight(step=0.25), max_images=3, max_rounds=5)
    seen = []
    out = FeedbackPipeline(sd_pipe, det, cfg)(
        [PROMPT, "a cyan cross"],
        output_type="pt",
        callback_on_round_end=lambda p, rec: seen.append((p, rec.round)),
        **GEN,
    )
    assert out.images.shape == (2, 3, 32, 32)
    assert len(seen) == 6 and seen[0] == (PROMPT, 0)
    for h in out.history:
        assert h.num_images == 3 and h.stopped == "max_images"
        assert [r.fix for r in h.rounds] == ["plain", "reweight", "reweight"]
        assert h.rounds[0].weights == [1.0] * len(h.rounds[0].weights)
        for prev, cur in zip(h.rounds, h.rounds[1:]):
            flagged = [i for i, w in enumerate(prev.reports[0].words) if w.misaligned]
            # the kept image's flagged word was raised, nothing was lowered
            assert all(c >= p for c, p in zip(cur.weights, prev.weights))
            assert len({w for w in range(len(cur.weights)) if cur.weights[w] > prev.weights[w]})
            assert flagged
        # the kept image is the best of every image the loop made (by the region score for
        # the two-object prompt, by F-CLIPScore for the one-object one: `rank_key`)
        all_reports = [rep for r in h.rounds for rep in r.reports]
        assert rank_key(h.best_report) == max(rank_key(r) for r in all_reports)
        seeds = [s for r in h.rounds for s in r.seeds]
        assert len(set(seeds)) == len(seeds)
    kept = out.history[0].rounds[out.history[0].best[0]].images[out.history[0].best[1]]
    assert torch.equal(out.images[0], kept)


def test_seeded_runs_are_deterministic(sd_pipe, tiny_open_clip_dir):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), mode="most-negative")
    fb = FeedbackPipeline(sd_pipe, det, LoopConfig(strategy="reweight", max_images=2))
    a = fb(PROMPT, generator=torch.Generator().manual_seed(7), output_type="pt", **GEN)
    b = fb(PROMPT, generator=torch.Generator().manual_seed(7), output_type="pt", **GEN)
    c = fb(PROMPT, generator=torch.Generator().manual_seed(8), output_type="pt", **GEN)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.history[0].rounds[0].images, c.history[0].rounds[0].images)
    # round 0 came from the caller's generator (no seed of ours); later rounds' seeds are
    # drawn from it, so they follow it too
    assert a.history[0].rounds[0].seeds == [None]
    assert a.history[0].rounds[1].seeds == b.history[0].rounds[1].seeds
    assert a.history[0].rounds[1].seeds != c.history[0].rounds[1].seeds


def test_best_of_n_is_one_batched_round(sd_pipe, detector):
    fb = FeedbackPipeline(sd_pipe, detector, LoopConfig(strategy="best_of_n", max_images=4))
    out = fb(PROMPT, output_type="pil", **GEN)
    h = out.history[0]
    assert len(h.rounds) == 1 and len(h.rounds[0].seeds) == 4
    reps = h.rounds[0].reports
    assert h.best == (0, max(range(4), key=lambda i: (rank_key(reps[i]), -i)))
    assert out.images[0].size == (32, 32)


def test_attend_and_excite_indices_and_run(sd_pipe, tokenizer, tiny_open_clip_dir):
    words = (
        MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
        .score(torch.rand(1, 3, 32, 32), [PROMPT])
        .words[0]
    )
    flags = [w.text in ("red", "astronautically", "...", ".") for w in words]
    idx = token_indices(PROMPT, words, flags, tokenizer)
    al = align_words(PROMPT, tokenizer, words=words)
    assert idx and not set(idx) & set(al.special_positions) and 0 not in idx
    red = al.positions[[w.text for w in words].index("red")]
    assert set(red) <= set(idx)
    # the loop hands the flagged words to diffusers' A&E pipeline, and gives the UNet back
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), mode="most-negative")
    before = {k: type(v) for k, v in sd_pipe.unet.attn_processors.items()}
    fb = FeedbackPipeline(sd_pipe, det, LoopConfig(strategy="attend_and_excite", max_images=2))
    out = fb(PROMPT, output_type="pt", **GEN)
    h = out.history[0]
    assert [r.fix for r in h.rounds] == ["plain", "attend_and_excite"]
    assert h.rounds[1].extra["token_indices"] and 0 not in h.rounds[1].extra["token_indices"]
    assert {k: type(v) for k, v in sd_pipe.unet.attn_processors.items()} == before


def test_bad_input_is_refused_before_generating(sd_pipe, sdxl_pipe, detector, monkeypatch):
    with pytest.raises(ValueError, match="unsupported pipeline"):
        FeedbackPipeline(object(), detector)
    with pytest.raises(ValueError, match="LoopConfig.max_images must be a positive integer"):
        LoopConfig(max_images=0)
    with pytest.raises(ValueError, match="SD 1.x"):
        FeedbackPipeline(sdxl_pipe, detector, LoopConfig(strategy="attend_and_excite"))
    fb = FeedbackPipeline(sd_pipe, detector)
    calls = []
    monkeypatch.setattr(fb, "_rounds", lambda *a, **k: calls.append(a) or iter(()))
    with pytest.raises(ValueError, match="negative_prompt"):
        fb(["a", "b"], negative_prompt=["x"], **GEN)
    with pytest.raises(ValueError, match="empty"):
        fb(["a red circle", "  "], **GEN)
    assert not calls
    monkeypatch.setattr(OpenClipBackend, "device", property(lambda self: torch.device("cuda", 0)))
    with pytest.raises(ValueError, match="device='cpu'"):
        FeedbackPipeline(sd_pipe, detector)


def test_prompt_longer_than_77_tokens_is_visible(sd_pipe, detector):
    fb = FeedbackPipeline(sd_pipe, detector, LoopConfig(strategy="best_of_n", max_images=1))
    long = " ".join(["a red circle and"] * 30)
    with pytest.warns(UserWarning, match="the generator never sees those words"):
        out = fb(long, output_type="pt", **GEN)
    assert out.images.shape[0] == 1


def test_weight_rule_is_bounded_and_grows_with_severity():
    from generation import raise_weights

    w = [1.0, 1.0, 1.0, 1.0]
    scores = [-0.001, -0.01, 0.002, None]  # threshold -0.002: 0.5x, 5x, positive, unscored
    flags = [True, True, False, True]
    nxt = raise_weights(w, scores, flags, threshold=-0.002, step=0.25, max_weight=2.0)
    assert nxt == [1.25, 1.5, 1.0, 1.0]  # at least one step, at most two; others untouched
    for _ in range(10):
        nxt = raise_weights(nxt, scores, flags, threshold=-0.002, step=0.25, max_weight=2.0)
    assert nxt == [2.0, 2.0, 1.0, 1.0]


def test_best_index_prefers_f_clipscore_then_clipscore():
    from feedback import MisalignmentReport
    from generation import best_index

    def rep(f, c):
        return MisalignmentReport("a", [], c / 2.5, c, f, f, False)

    assert best_index([rep(-0.2, 0.9), rep(0.0, 0.1), rep(0.0, 0.3)]) == 2
    assert best_index([rep(-0.1, 0.5), rep(-0.1, 0.5)]) == 0
    with pytest.raises(ValueError):
        best_index([])


def test_stream_yields_each_round_then_the_history(sd_pipe, tiny_open_clip_dir):
    from generation import PromptHistory, RoundEvent

    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), mode="most-negative")
    fb = FeedbackPipeline(sd_pipe, det, LoopConfig(strategy="reweight", max_images=2))
    items = list(fb.stream([PROMPT, "a cyan cross"], **GEN))
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["RoundEvent", "RoundEvent", "PromptHistory"] * 2
    assert isinstance(items[0], RoundEvent) and items[0].prompt == PROMPT
    assert isinstance(items[2], PromptHistory) and items[2].rounds[0] is items[0].record


# ---------------------------------------------------------------- per-phrase guidance
TWO = "a small red circle to the left of a blue square"


@pytest.mark.parametrize(
    "prompt, phrases",
    [
        (TWO, ["a small red circle", "a blue square"]),
        (
            "a red circle on the left and a blue square on the right",
            ["a red circle on the left", "a blue square on the right"],
        ),
        ("a white cross above a small green triangle", ["a white cross", "a small green triangle"]),
        ("there is a cyan square", ["there is a cyan square"]),
        ("a cat, a dog; with (a hat:1.2)...", ["a cat", "a dog", "(a hat:1.2)..."]),
        ("An astronaut Next To a horse", ["An astronaut", "a horse"]),
        ("草原の馬と、青い空", ["草原の馬と", "青い空"]),
    ],
)
def test_split_phrases(prompt, phrases):
    got = split_phrases(prompt)
    assert [p.text for p in got] == phrases
    assert all(prompt[p.start : p.end] == p.text for p in got)


def test_words_map_to_phrases_and_relations_to_none():
    from feedback.words import split_words

    words = split_words(TWO)
    k = word_phrases(words, split_phrases(TWO))
    by = {w.text: p for w, p in zip(words, k)}
    assert by["red"] == 0 and by["circle"] == 0 and by["blue"] == 1 and by["square"] == 1
    assert by["left"] is None and by["of"] is None
    # a phrase grows once per round, however many of its words are flagged; bounded
    w = raise_phrase_weights(
        [0.0, 0.0], k, [x.text in ("red", "circle") for x in words], step=0.5, max_weight=0.75
    )
    assert w == [0.5, 0.0]
    w = raise_phrase_weights(w, k, [x.text == "red" for x in words], step=0.5, max_weight=0.75)
    assert w == [0.75, 0.0]


def _unet_inputs(pipe, sdxl: bool):
    torch.manual_seed(1)
    b = 2
    d = pipe.unet.config.cross_attention_dim
    x = torch.randn(b, 4, 16, 16)
    ehs = torch.randn(2 * b, 77, d)
    kw = {}
    if sdxl:
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2 * b, 32),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]]).repeat(2 * b, 1),
        }
    return x, ehs, kw


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_guidance_adds_one_term_per_phrase(which, sd_pipe, sdxl_pipe):
    pipe = sd_pipe if which == "sd" else sdxl_pipe
    unet = pipe.unet
    x, ehs, kw = _unet_inputs(pipe, which == "sdxl")
    t = torch.tensor(500)
    phrases = torch.randn(3, 77, ehs.shape[-1])
    w = [0.5, 0.0, 1.25]
    with torch.no_grad():
        plain = unet(torch.cat([x, x]), t, ehs, return_dict=False, **kw)[0]
        with phrase_guidance(pipe, phrases, w):
            got = unet(torch.cat([x, x]), t, ehs, return_dict=False, **kw)[0]
        unc, cond = plain[:2], plain[2:]
        want = cond.clone()
        for k in (0, 2):  # phrase 1 has weight 0: not run at all
            kk = (
                {"added_cond_kwargs": {n: v[2:] for n, v in kw["added_cond_kwargs"].items()}}
                if kw
                else {}
            )
            ek = unet(x, t, phrases[k : k + 1].repeat(2, 1, 1), return_dict=False, **kk)[0]
            want += w[k] * (ek - unc)
    torch.testing.assert_close(got[:2], unc, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[2:], want, atol=1e-5, rtol=1e-4)
    assert "forward" not in unet.__dict__  # the UNet is given back as it was


def test_phrase_guidance_loop(sd_pipe, tiny_open_clip_dir):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), mode="most-negative")
    cfg = LoopConfig(strategy=PhraseGuidance(step=0.5), max_images=3)
    calls = []
    inner = sd_pipe.unet.forward
    out = FeedbackPipeline(sd_pipe, det, cfg)(
        [TWO, "a cyan cross"],
        output_type="pt",
        callback_on_step_end=lambda p, i, t, kw: calls.append(i) or kw,
        **GEN,
    )
    assert sd_pipe.unet.forward == inner
    two, one = out.history
    assert two.rounds[0].extra["phrases"] == ["a small red circle", "a blue square"]
    assert two.rounds[0].extra["phrase_weights"] == [0.0, 0.0] and two.rounds[0].fix == "plain"
    for prev, cur in zip(two.rounds, two.rounds[1:]):
        flagged = [w for w in prev.reports[0].words if w.misaligned]
        assert flagged
        assert cur.fix == "phrase_guidance"
        raised = [
            k
            for k, (a, b) in enumerate(
                zip(prev.extra["phrase_weights"], cur.extra["phrase_weights"])
            )
            if b > a
        ]
        reweighted = [i for i, (a, b) in enumerate(zip(prev.weights, cur.weights)) if b > a]
        # each round raises a phrase (attribute words) or re-weights a word between phrases
        assert raised or reweighted
        assert all(w <= cfg.strategy.max_weight for w in cur.extra["phrase_weights"])
    # one phrase: the global fix is already local, so the loop re-weights
    assert one.rounds[0].extra["phrases"] == ["a cyan cross"]
    assert [r.fix for r in one.rounds] == ["plain", "reweight", "reweight"]
    with pytest.raises(ValueError, match="guidance_scale > 1"):
        FeedbackPipeline(sd_pipe, det, cfg)(TWO, **{**GEN, "guidance_scale": 1.0})


def test_phrase_guidance_changes_the_image_only_when_a_phrase_is_weighted(sd_pipe):
    phrases = split_phrases(TWO)
    embs = torch.cat([sd_pipe.encode_prompt(p.text, "cpu", 1, False)[0] for p in phrases])

    def run(w):
        g = torch.Generator().manual_seed(3)
        with phrase_guidance(sd_pipe, embs, w):
            return sd_pipe(TWO, generator=g, output_type="pt", **GEN).images

    g = torch.Generator().manual_seed(3)
    plain = sd_pipe(TWO, generator=g, output_type="pt", **GEN).images
    assert torch.equal(run([0.0, 0.0]), plain)
    assert not torch.allclose(run([1.0, 0.0]), plain)


def test_resample_is_best_of_n_that_stops_early(sd_pipe, tiny_open_clip_dir):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), mode="most-negative")
    seq = FeedbackPipeline(sd_pipe, det, LoopConfig(strategy="resample", max_images=3, seed=5))
    bon = FeedbackPipeline(sd_pipe, det, LoopConfig(strategy="best_of_n", max_images=3, seed=5))
    h = seq(TWO, output_type="pt", **GEN).history[0]
    b = bon(TWO, output_type="pt", **GEN).history[0]
    assert [r.fix for r in h.rounds] == ["plain", "resample", "resample"]
    assert [s for r in h.rounds for s in r.seeds] == b.rounds[0].seeds
    assert all(w == 1.0 for r in h.rounds for w in r.weights)
    # the same images as the batched best-of-N, so the same one is kept
    imgs = torch.cat([r.images for r in h.rounds])
    torch.testing.assert_close(imgs, b.rounds[0].images, atol=1e-4, rtol=0)
    assert h.best == (b.best[1], 0)
    # and it stops as soon as nothing is flagged
    ok = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=-1e9)
    h = FeedbackPipeline(sd_pipe, ok, LoopConfig(strategy="resample", max_images=3))(
        TWO, **GEN
    ).history[0]
    assert h.num_images == 1 and h.stopped == "nothing_flagged"
