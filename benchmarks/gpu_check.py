"""What the feedback costs on a GPU: detector throughput against a plain CLIPScore forward at
real CLIP shapes, and the feedback's share of a loop round. Random weights (nothing to
download); ratios are measured in the same process, so a noisy machine cancels out.

    python benchmarks/gpu_check.py                          # CUDA: the full grid
    python benchmarks/gpu_check.py --device cpu --models ViT-B-32 --dtypes fp32 --batches 1 2 \\
        --pipeline shapesworld/weights/shapes-sd-tiny --sizes 64 --steps 2   # CPU smoke test

1. For each open_clip shape (ViT-B/32, ViT-L/14, ViT-H/14 by default), dtype (fp16, bf16) and
   batch (1, 8, 32): images/s of `MisalignmentDetector.score` (CLIP4DM attribution, the last
   K=3 text layers) and of a CLIPScore forward (image + text towers, no gradients), and their
   ratio; and of region-aware scoring (`score_regions`, a two-object prompt: every split-line
   region encoded, each phrase attributed on its own region) against the detector.
2. With `--pipeline PATH` (any local diffusers text-to-image folder; SDXL-, SD3- or FLUX-
   shaped random pipelines can be saved there with `save_pretrained`): one loop round
   (`FeedbackPipeline`, best_of_n, 1 image) per size in `--sizes`, `--steps` steps, and the
   share of its time spent in the detector (region scoring included).
Prints markdown tables and, with `--json`, writes them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from results_io import add_results_argument, save_result

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timeit(fn, device, repeat=3):
    fn()  # warm-up (kernels, caches)
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def detector_rows(models, dtypes, batches, device, layers=3):
    import open_clip

    from feedback import DetectorConfig, MisalignmentDetector
    from feedback.backends import OpenClipBackend

    rows = []
    for name in models:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        model = model.to(device).eval()
        tok = open_clip.get_tokenizer(name)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        for dname in dtypes:
            m = model.to(DTYPES[dname])
            det = MisalignmentDetector(
                OpenClipBackend(m, preprocess, tok, name=name), DetectorConfig(layers=layers)
            )
            for b in batches:
                x = torch.rand(b, 3, size, size, device=device)
                caps = ["a small red circle to the left of a large blue square"] * b

                def feedback(det=det, x=x, caps=caps):
                    det.score(x, caps)

                @torch.no_grad()
                def clipscore(det=det, x=x, caps=caps, m=m, tok=tok, dt=DTYPES[dname]):
                    img = m.encode_image(det.backend.preprocess_tensor(x).to(dt))
                    txt = m.encode_text(tok(caps).to(device))
                    torch.nn.functional.cosine_similarity(img.float(), txt.float())

                def regions(det=det, x=x, caps=caps):
                    det.score_regions(x, caps)

                tf, tc = _timeit(feedback, device), _timeit(clipscore, device)
                tr = _timeit(regions, device)
                rows.append(
                    {
                        "model": name,
                        "dtype": dname,
                        "batch": b,
                        "detector_img_s": b / tf,
                        "clipscore_img_s": b / tc,
                        "regions_img_s": b / tr,
                        "detector_over_clipscore_time": tf / tc,
                        "regions_over_detector_time": tr / tf,
                    }
                )
                print(
                    f"| {name} | {dname} | {b} | {b / tf:.1f} | {b / tc:.1f} | {tf / tc:.2f}x | "
                    f"{b / tr:.1f} | {tr / tf:.2f}x |",
                    flush=True,
                )
    return rows


def loop_rows(path, sizes, steps, device, dtype):
    from diffusers import DiffusionPipeline

    from feedback import MisalignmentDetector
    from generation import FeedbackPipeline, LoopConfig

    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=DTYPES[dtype]).to(device)
    pipe.set_progress_bar_config(disable=True)
    det = MisalignmentDetector.from_pretrained("shapes-tiny-gen", device=device)
    rows = []
    for px in sizes:
        fb = FeedbackPipeline(pipe, det, LoopConfig(strategy="best_of_n", max_images=1))
        clock = {"detector": 0.0, "depth": 0}
        score, score_regions = det.score, det.score_regions

        def timing(fn, clock=clock):
            def run(*a, **k):  # region scoring calls score inside: count the outer call
                _sync(device)
                t = time.perf_counter()
                clock["depth"] += 1
                try:
                    return fn(*a, **k)
                finally:
                    _sync(device)
                    clock["depth"] -= 1
                    if clock["depth"] == 0:
                        clock["detector"] += time.perf_counter() - t

            return run

        det.score, det.score_regions = timing(score), timing(score_regions)
        kw = dict(num_inference_steps=steps, height=px, width=px, output_type="pt")
        fb("a small red circle to the left of a large blue square", **kw)  # warm-up
        clock["detector"] = 0.0
        _sync(device)
        t = time.perf_counter()
        fb("a small red circle to the left of a large blue square", **kw)
        _sync(device)
        total = time.perf_counter() - t
        det.score, det.score_regions = score, score_regions
        share = clock["detector"] / total
        rows.append(
            {
                "pipeline": str(path),
                "px": px,
                "steps": steps,
                "round_s": total,
                "feedback_share": share,
            }
        )
        print(f"| {type(pipe).__name__} | {px} | {steps} | {total:.2f} | {100 * share:.1f}% |")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14", "ViT-H-14"])
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=list(DTYPES))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--pipeline", default=None, help="a local diffusers pipeline folder")
    p.add_argument("--pipeline-dtype", default="fp16", choices=list(DTYPES))
    p.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", default=None)
    add_results_argument(p)
    args = p.parse_args()
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device: {dev}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}\n")
    print(
        "| model | dtype | batch | detector img/s | CLIPScore img/s | detector time / CLIPScore "
        "| regions img/s | regions time / detector |"
    )
    print("|---|---|---|---|---|---|---|---|")
    out = {"device": dev, "date": time.strftime("%Y-%m-%d")}
    out["detector"] = detector_rows(args.models, args.dtypes, args.batches, args.device)
    if args.pipeline:
        print("\n| pipeline | px | steps | round s | feedback share |\n|---|---|---|---|---|")
        out["loop"] = loop_rows(
            args.pipeline, args.sizes, args.steps, args.device, args.pipeline_dtype
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    save_result(args.results, out, kind="gpu_check", page="speed", title=f"On a GPU: {dev}")


if __name__ == "__main__":
    main()
