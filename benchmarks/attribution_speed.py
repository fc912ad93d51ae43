"""Speed and memory of the batched CLIP4DM attribution against two baselines, one process.

    python benchmarks/attribution_speed.py [--models vit-b-32 shapes-tiny] [--pairs 32]

(a) CLIPScore as users run it today (open_clip style): text padded to the context length,
    image + text forward, no gradients.
(b) ours: `MisalignmentDetector.detect` (batched; one backward through the last K text layers).
(c) reference style: transformers CLIPModel with eager attention and `output_attentions`, one
    pair per call, text padded to the context, one `autograd.grad` per layer.
All three start from PIL images and caption strings. Prints pairs/s (best of --repeat runs),
the ratios b/a and b/c for batch sizes 1, 8 and 32, and the peak RSS growth during each run
(a sampled estimate: CPU has no allocator counter). Weights are random: the shape, not the
weights, sets the cost.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import tempfile
import threading
import time

import numpy as np
import psutil
import torch
from results_io import add_results_argument, save_result, tables_from

from feedback import MisalignmentDetector, OpenClipBackend
from feedback.convert import open_clip_to_transformers
from feedback.registry import shipped_model
from shapesworld import describe, render_scene, sample_scene


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS so RSS growth reflects this run's allocations."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


class PeakRSS:
    """Peak resident-set growth (MiB) while the block runs, sampled every 2 ms."""

    def __enter__(self):
        _release_free_memory()
        self.proc = psutil.Process(os.getpid())
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        self.mib = (self.peak - self.base) / 2**20


def pairs_for(n: int, resolution: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, 2)
        img = render_scene(scene, 32).resize((resolution, resolution))
        out.append((img, describe(scene, rng).text))
    return out


def clipscore_baseline(backend: OpenClipBackend, pairs, batch_size: int):
    model = backend.model
    for i in range(0, len(pairs), batch_size):
        imgs, caps = zip(*pairs[i : i + batch_size])
        with torch.no_grad():
            px = backend.preprocess(list(imgs))
            ids = backend.tokenize(["A photo depicts " + c for c in caps])  # full context
            a = torch.nn.functional.normalize(model.encode_image(px), dim=-1)
            b = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
            _ = 2.5 * (a * b).sum(-1).clamp(min=0)


def reference_loop(hf, tok, proc, pairs, layers: int = 3):
    ctx = hf.config.text_config.max_position_embeddings
    for img, cap in pairs:
        ids = tok(
            ["A photo depicts " + cap],
            padding="max_length",
            max_length=ctx,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        px = proc(images=[img], return_tensors="pt").pixel_values
        out = hf(input_ids=ids, pixel_values=px, output_attentions=True)
        s = (out.image_embeds * out.text_embeds).sum()
        cams = []
        for a in out.text_model_output.attentions[-layers:]:
            g = torch.autograd.grad(s, [a], retain_graph=True)[0]
            cams.append((g * a).mean(1))
        _ = torch.stack(cams).mean(0)


def detect_all(det: MisalignmentDetector, pairs, batch_size: int):
    det.detect([i for i, _ in pairs], [c for _, c in pairs], batch_size=batch_size)


REPEAT = 2


def timed(fn, *args, repeat: int | None = None):
    """Best of `repeat` timed runs after one warm-up (the best run is the least disturbed by
    other load on a shared machine); peak RSS growth over all of them."""
    repeat = repeat or REPEAT
    fn(*args)  # warm-up (allocator, lazy init)
    best = float("inf")
    with PeakRSS() as mem:
        for _ in range(repeat):
            t = time.perf_counter()
            fn(*args)
            best = min(best, time.perf_counter() - t)
    return best, mem.mib


def build(name: str):
    import open_clip
    from transformers import CLIPImageProcessor

    from feedback.convert import write_clip_tokenizer

    if name == "vit-b-32":
        cfg = open_clip.get_model_config("ViT-B-32")
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
        backend = OpenClipBackend(
            model, preprocess, open_clip.get_tokenizer("ViT-B-32"), name="ViT-B-32 (random)"
        )
    else:
        det = MisalignmentDetector.from_pretrained(name)
        backend = det.backend
        cfg = json.loads((shipped_model(name).path / "open_clip_config.json").read_text())
        cfg = cfg["model_cfg"]
    hf = open_clip_to_transformers(backend.model.float(), cfg, attn_implementation="eager")
    tok = write_clip_tokenizer(tempfile.mkdtemp())
    size = cfg["vision_cfg"]["image_size"]
    proc = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    return backend, hf, tok, proc, size


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vit-b-32", "shapes-tiny"])
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="timed runs per cell (best is kept)")
    add_results_argument(p)
    args = p.parse_args()
    global REPEAT
    REPEAT = args.repeat
    torch.set_num_threads(args.threads)
    rows, reference = [], {}
    for name in args.models:
        try:
            backend, hf, tok, proc, size = build(name)
        except Exception as e:  # e.g. shapes-tiny not shipped yet
            print(f"\n{name}: skipped ({e})")
            continue
        det = MisalignmentDetector(backend)
        pairs = pairs_for(args.pairs, size)
        print(
            f"\n== {name}: {args.pairs} pairs, {args.threads} threads, "
            f"text layers {backend.num_text_layers}, context {backend.context_length}"
        )
        tc, mc = timed(reference_loop, hf, tok, proc, pairs)
        print(f"(c) reference loop     {args.pairs / tc:8.2f} pairs/s   peak +{mc:7.1f} MiB")
        reference[name] = args.pairs / tc
        for bs in (1, 8, 32):
            ta, ma = timed(clipscore_baseline, backend, pairs, bs)
            tb, mb = timed(detect_all, det, pairs, bs)
            print(
                f"batch {bs:>2}: (a) CLIPScore {args.pairs / ta:8.2f} pairs/s (+{ma:6.1f} MiB)"
                f"  (b) ours {args.pairs / tb:8.2f} pairs/s (+{mb:6.1f} MiB)"
                f"  b/a {ta / tb:5.2f}  b/c {tc / tb:6.2f}"
            )
            rows.append(
                [
                    name,
                    bs,
                    f"{args.pairs / ta:.2f}",
                    f"{args.pairs / tb:.2f}",
                    f"{ta / tb:.2f}",
                    f"{tc / tb:.2f}",
                    f"+{ma:.1f} / +{mb:.1f} / +{mc:.1f} MiB",
                ]
            )
    head = ["model", "batch", "(a) CLIPScore", "(b) ours", "b/a", "b/c", "peak RSS (a / b / c)"]
    save_result(
        args.results,
        {"rows": rows, "reference_pairs_per_s": reference, "pairs": args.pairs},
        kind="attribution_speed",
        page="speed",
        title="Attribution speed: CLIPScore, ours, the reference",
        tables=[tables_from(head, rows)],
    )


if __name__ == "__main__":
    main()
