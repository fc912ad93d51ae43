"""`clip4dm demo` and `clip4dm generate`: the feedback loop from the command line, thin over
`generation.FeedbackPipeline` (imported when the command runs: `pip install -e .[generation]`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import Clip4dmError, InputError, ModelLoadError
from .options import add_detector_args, build_detector, positive_int

SHIPPED_PIPELINE = "shapes-sd-tiny"
#: The loop commands' default detector: tuned on that pipeline's generated images.
LOOP_DETECTOR = "shapes-tiny-gen"


def _add_loop_args(p) -> None:
    p.add_argument(
        "--pipeline",
        default=SHIPPED_PIPELINE,
        help="diffusers pipeline folder or hub id (SD 1.x/2.x or SDXL); "
        f"default: the shipped {SHIPPED_PIPELINE}",
    )
    p.add_argument(
        "--strategy",
        choices=["best_of_n", "resample", "reweight", "phrase_guidance", "attend_and_excite"],
        default="best_of_n",  # generation.RECOMMENDED_STRATEGY (a test keeps them equal)
        help="the fix the loop applies (default: best_of_n, the best on the shipped models' "
        "benchmark)",
    )
    p.add_argument(
        "--budget", type=positive_int, default=4, help="images per prompt, all rounds (default 4)"
    )
    p.add_argument("--steps", type=positive_int, default=20, help="inference steps (default 20)")
    p.add_argument("--guidance", type=float, default=4.0, help="guidance scale (default 4)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    add_detector_args(p, LOOP_DETECTOR)


def add_commands(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="run the loop on held-out ShapesWorld prompts with the shipped models; "
        "writes an HTML report and a PNG grid",
    )
    d.add_argument("--out", default="clip4dm-demo", help="output folder (default clip4dm-demo)")
    d.add_argument(
        "--prompts", nargs="+", default=None, help="prompts (default: 6 held-out ShapesWorld ones)"
    )
    _add_loop_args(d)
    d.set_defaults(func=_cmd_demo)

    g = sub.add_parser(
        "generate",
        help="run the loop over a prompt file; images + one JSONL line per prompt, resumable, "
        "sharded under torchrun",
    )
    g.add_argument("--prompts", required=True, help="text file, one prompt per line")
    g.add_argument("--out", required=True, help="output folder (reruns resume)")
    _add_loop_args(g)
    g.set_defaults(func=_cmd_generate)

    a = sub.add_parser(
        "app", help="a local web page: check an image, or generate and watch the loop fix it"
    )
    a.add_argument(
        "--pipeline",
        default=SHIPPED_PIPELINE,
        help=f"diffusers pipeline for the Generate tab (default: the shipped {SHIPPED_PIPELINE})",
    )
    a.add_argument("--no-pipeline", action="store_true", help="only the Check tab")
    a.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine)"
    )
    a.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    add_detector_args(a, LOOP_DETECTOR)
    a.set_defaults(func=_cmd_app)


def load_pipeline(name: str, device: str):
    """A diffusers text-to-image pipeline by shipped name, folder or hub id."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise Clip4dmError("the loop needs diffusers: pip install -e '.[generation]'") from None
    if name == SHIPPED_PIPELINE:
        from shapesworld.pipelines import load_pipeline as load_shipped

        try:
            return load_shipped(device=device)
        except FileNotFoundError as e:
            raise ModelLoadError(str(e)) from None
    from diffusers import AutoPipelineForText2Image

    from ..hub import offline_if_unreachable, offline_message

    looks_local = name.startswith((".", "/", "~")) or os.sep in name and Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"pipeline folder not found: {name}")
    offline = False
    try:
        with offline_if_unreachable() as offline:
            pipe = AutoPipelineForText2Image.from_pretrained(name)
    except Exception as e:  # diffusers raises many kinds; one line naming the pipeline
        hint = offline_message(name) if offline else str(e)[:300]
        raise ModelLoadError(f"could not load pipeline {name!r}: {hint}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _fb(args, pipe):
    from generation import FeedbackPipeline, LoopConfig

    if args.threshold is None and args.pipeline == SHIPPED_PIPELINE:
        # The shipped pipeline's card calibrates the detector's eps on *generated* images.
        from shapesworld.pipelines import loop_threshold

        args.threshold = loop_threshold(detector=args.model)
    det = build_detector(args)
    cfg = LoopConfig(strategy=args.strategy, max_images=args.budget, seed=args.seed)
    try:
        return FeedbackPipeline(pipe, det, cfg)
    except ValueError as e:
        raise InputError(str(e)) from None


def _cmd_demo(args) -> int:
    from tqdm.auto import tqdm

    from generation.figures import to_pil, write_grid, write_html
    from shapesworld import judge
    from shapesworld.pipelines import prompt_set

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = args.prompts or [p.text for p in prompt_set(6)]
    t0 = time.perf_counter()
    pipe = load_pipeline(args.pipeline, args.device)
    fb = _fb(args, pipe)
    shapes = args.pipeline == SHIPPED_PIPELINE
    history = []
    with open(out / "results.jsonl", "w") as f:
        for i, prompt in enumerate(tqdm(prompts, desc="clip4dm demo", unit="prompt")):
            res = _run(fb, prompt, args)
            history.append(res)
            f.write(json.dumps({"index": i, **res.to_dict()}) + "\n")
    from shapesworld.oracle import in_grammar, oracle_verdicts

    def oracle(image, prompt):  # judged only where the oracle can read the prompt
        return oracle_verdicts(image, prompt) if in_grammar(prompt) else ([], None)

    oracle = oracle if shapes else None
    html_path = write_html(history, out / "report.html", oracle=oracle)
    grid_path = write_grid(history, out / "grid.png")
    print(f"\n{'prompt':<62} {'imgs':>4}  {'flagged (kept image)':<22} {'oracle':<6}")
    for h in history:
        r, k = h.best
        verdict = "-"
        if shapes and in_grammar(h.prompt):
            verdict = (
                "right" if judge(to_pil(h.rounds[r].images[k]), h.prompt).all_correct else "wrong"
            )
        flagged = ", ".join(h.best_report.misaligned_words) or "-"
        print(f"{h.prompt[:62]:<62} {h.num_images:>4}  {flagged[:22]:<22} {verdict:<6}")
    print(f"\n{len(prompts)} prompts in {time.perf_counter() - t0:.1f} s")
    print(f"report: {html_path}\ngrid:   {grid_path}\njson:   {out / 'results.jsonl'}")
    return 0


def _run(fb, prompt: str, args):
    """One prompt through the loop; the loop's input errors become one-line CLI errors."""
    try:
        return fb(
            prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="pt"
        ).history[0]
    except ValueError as e:
        raise InputError(str(e)) from None


def _read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompt file not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{p} is not UTF-8 text (one prompt per line)") from None
    prompts = [ln.strip() for ln in lines if ln.strip()]
    if not prompts:
        raise InputError(f"{p} holds no prompts")
    return prompts


def _done(out: Path) -> set[int]:
    done = set()
    for f in out.glob("results-*.jsonl"):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                done.add(int(json.loads(line)["index"]))
            except (json.JSONDecodeError, KeyError, ValueError):
                continue  # a line cut by a kill: that prompt runs again
    return done


def _cmd_generate(args) -> int:
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from generation.figures import to_pil

    prompts = _read_prompts(args.prompts)
    state = PartialState(cpu=args.device == "cpu")
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    done = _done(out)
    mine = [i for i in range(len(prompts)) if i % state.num_processes == state.process_index]
    todo = [i for i in mine if i not in done]
    device = str(state.device) if args.device != "cpu" else "cpu"
    pipe = load_pipeline(args.pipeline, device)
    fb = _fb(args, pipe)
    written = 0
    rank = f"{state.process_index}-of-{state.num_processes}"
    results = out / f"results-{rank}.jsonl"
    if results.exists() and results.stat().st_size and not results.read_bytes().endswith(b"\n"):
        with open(results, "a", encoding="utf-8") as f:
            f.write("\n")  # a line cut by a kill stays alone (and is ignored), not glued
    with open(results, "a", encoding="utf-8") as f:
        for i in tqdm(todo, desc=f"clip4dm generate [{rank}]", disable=not state.is_main_process):
            fb.config.seed = args.seed + 1000 * i  # independent of sharding and resumes
            h = _run(fb, prompts[i], args)
            for rec in h.rounds:
                for k, img in enumerate(rec.images):
                    to_pil(img).save(out / "images" / f"{i:05d}_r{rec.round}_{k}.png")
            r, k = h.best
            to_pil(h.rounds[r].images[k]).save(out / "images" / f"{i:05d}.png")
            f.write(json.dumps({"index": i, **h.to_dict()}) + "\n")
            f.flush()
            written += 1
    summary = {
        "process_index": state.process_index,
        "num_processes": state.num_processes,
        "prompts": len(prompts),
        "assigned": len(mine),
        "skipped_done": len(mine) - len(todo),
        "written": written,
    }
    print(json.dumps(summary))
    return 0


def _cmd_app(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from generation.app import App, launch
    except ImportError as e:
        raise Clip4dmError(f"the app needs gradio: pip install -e '.[app]' ({e})") from None
    det = build_detector(args)
    pipe = None if args.no_pipeline else load_pipeline(args.pipeline, args.device)
    print(f"clip4dm app on http://{args.host}:{args.port} (Ctrl+C stops it)")
    launch(App(det, pipe), host=args.host, port=args.port, block=True)
    return 0
