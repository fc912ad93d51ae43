"""The `clip4dm` command line's composition root: the detector's commands (check, score, eval,
calibrate from `feedback.cli`) plus the loop's (demo, generate, app), thin over
`generation.FeedbackPipeline`. `main` is the console entry point; `python -m generation.cli` is
what `torchrun` runs on every rank."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import shapesworld.benchmark  # noqa: F401  (registers the testbed's `eval --benchmark shapes-foil`)
from feedback.cli.main import build_parser as _feedback_parser
from feedback.cli.main import main as _feedback_main
from feedback.cli.options import DEFAULT_MODEL, add_detector_args, build_detector, positive_int
from feedback.errors import Clip4dmError, InputError, ModelLoadError
from shapesworld.pipelines import LOOP_DETECTOR
from shapesworld.pipelines import PIPELINE_NAME as SHIPPED_PIPELINE

from .config import RECOMMENDED_STRATEGY
from .strategies import STRATEGIES


def _add_loop_args(p, testbed: bool = False) -> None:
    """The loop's options; `testbed`: defaults are the shipped ShapesWorld models (demo),
    else the pipeline must be named and the detector is the real default CLIP."""
    if testbed:
        p.add_argument(
            "--pipeline",
            default=SHIPPED_PIPELINE,
            help="diffusers pipeline folder or hub id of any family (default: the shipped "
            f"testbed pipeline {SHIPPED_PIPELINE})",
        )
    else:
        p.add_argument(
            "--pipeline",
            required=True,
            help="diffusers pipeline folder or hub id of any family (SD 1.x/2.x, SDXL, "
            "SD3/3.5, FLUX.1, PixArt-Σ, Sana; others: selection strategies only); the offline "
            f"testbed: {SHIPPED_PIPELINE}",
        )
    p.add_argument(
        "--strategy",
        choices=sorted(STRATEGIES),
        default=RECOMMENDED_STRATEGY,
        help=f"the fix the loop applies (default: {RECOMMENDED_STRATEGY}, the best on the "
        "shipped models' benchmark)",
    )
    p.add_argument(
        "--budget", type=positive_int, default=4, help="images per prompt, all rounds (default 4)"
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="inference steps (default: the card beside the pipeline's weights, else the "
        "pipeline's own call default, e.g. 28 for FLUX.1, 50 for SD)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale (default: the pipeline's card, else its own call default)",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument(
        "--height", type=positive_int, default=None, help="image height (default: the pipeline's)"
    )
    p.add_argument(
        "--width", type=positive_int, default=None, help="image width (default: the pipeline's)"
    )
    p.add_argument(
        "--pipeline-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=pipeline_arg,
        help="another argument of the pipeline's call, VALUE as JSON when it parses "
        "(max_sequence_length=256, true_cfg_scale=4, use_resolution_binning=false, "
        "complex_human_instruction=null); repeatable",
    )
    p.add_argument(
        "--lora",
        default=None,
        metavar="NAME|PATH",
        help="load a LoRA into the pipeline first (stock load_lora_weights): a shipped one's "
        "short name (shapesworld/weights/<pipeline>-lora-NAME) or a folder holding "
        "pytorch_lora_weights.safetensors; a recipe's --train full result (a diffusers UNet "
        "folder) replaces the UNet instead",
    )
    p.add_argument(
        "--verifier",
        default="auto",
        metavar="CARD|auto|none",
        help="verifier card (clip4dm calibrate --verifier): the loop keeps the image it ranks "
        "first and stops early only when its P(right) reaches the card's level; auto: the "
        "card beside the pipeline's weights (verifier.json) when it was fitted for the "
        "detector; none: region-score / F-CLIPScore selection, stop when nothing is flagged",
    )
    add_detector_args(p, LOOP_DETECTOR if testbed else DEFAULT_MODEL)
    for a in p._actions:
        if a.dest == "model" and not testbed:
            a.default = None
            a.help = (
                "the detector's CLIP (shipped name, folder, open_clip name, hf-hub:org/repo or "
                "transformers hub id); default: the one the pipeline's card names, else "
                f"{DEFAULT_MODEL}"
            )
        if a.dest == "threshold":
            a.help = (
                "threshold mode flags words scoring below EPS; must be <= 0 (default: the eps "
                "the pipeline's card calibrated for this detector on generated images, else the "
                "detector card's)"
            )


def loop_verifier(args):
    """The `--verifier` the loop uses: "auto" (the card beside the pipeline's weights, found
    by `FeedbackPipeline`), a loaded card, or None."""
    from feedback import Verifier

    choice = getattr(args, "verifier", "none")
    if choice == "none":
        return None
    if choice == "auto":
        return "auto"
    return Verifier.load(choice)


def pipeline_card(name: str):
    """The clip4dm card in the pipeline's folder (`generation.cards`), read before the
    pipeline loads; None for a hub id or a folder without one."""
    from .cards import PipelineCard

    folder = shipped_pipeline_folder(name) or Path(name).expanduser()
    return PipelineCard.load(folder) if folder.is_dir() else None


def shipped_pipeline_folder(name: str) -> Path | None:
    """The folder of a shipped pipeline named `name` (the testbed), else None."""
    if name != SHIPPED_PIPELINE:
        return None
    from shapesworld.pipelines import pipeline_path

    return pipeline_path(name)


def pipeline_arg(text: str) -> tuple[str, object]:
    """KEY=VALUE -> (key, value): JSON when VALUE parses as JSON, else the string."""
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


_OWN = {
    "prompt",
    "prompt_embeds",
    "generator",
    "output_type",
    "num_images_per_prompt",
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "return_dict",
    "callback_on_step_end",
}


def call_kwargs(args) -> dict:
    """The pipeline call's extra arguments from --height/--width/--pipeline-arg, checked
    before any model loads (`generation.call_args`): each --pipeline-arg against the call of
    the class `--pipeline`'s model_index.json names (skipped for a hub id not in the cache),
    and a `--pipeline` folder without model_index.json refused."""
    kw = {}
    for key, value in args.pipeline_arg:
        if key in _OWN:
            flag = {
                "num_inference_steps": "--steps",
                "guidance_scale": "--guidance",
                "height": "--height",
                "width": "--width",
            }.get(key)
            raise InputError(
                f"--pipeline-arg {key}: " + (f"use {flag}" if flag else "the loop sets it itself")
            )
        kw[key] = value
    from .call_args import check_call_args

    name = getattr(args, "pipeline", None)
    if name == SHIPPED_PIPELINE:
        try:
            name = str(shipped_pipeline_folder(name))
        except FileNotFoundError:
            name = None  # load_pipeline says so
    kw = check_call_args(name, kw, own=_OWN)  # also: a folder that is no pipeline stops here
    for key in ("height", "width"):
        if getattr(args, key, None) is not None:
            kw[key] = getattr(args, key)
    return kw


def _extend_calibrate(sub) -> None:
    """`clip4dm calibrate --fixes`: the loop's measured fix gains go into the verifier card the
    detector's calibrate command fits (`generation.fixes`)."""
    c = sub.choices["calibrate"]
    c.add_argument(
        "--fixes",
        default=None,
        metavar="TRIALS.jsonl",
        help="with --verifier: also record what each loop fix bought over a fresh sample, from "
        'labelled trials ({"fix", "kind", "fixed_right", "fresh_right"} per line; '
        "python -m shapesworld.build.measure_fixes makes them for ShapesWorld); the loop then "
        "applies a fix only where it paid",
    )
    fit = c.get_default("func")

    def run(args) -> int:
        from feedback import Verifier

        from .fixes import fit_fix_gains, read_fix_trials, set_fix_gains

        gains = None
        if args.fixes:
            if not args.verifier:
                raise InputError("--fixes goes into a verifier card: give --verifier CARD.json too")
            gains = fit_fix_gains(read_fix_trials(args.fixes))  # bad trials fail before fitting
        code = fit(args)
        if gains is not None and code == 0:
            card = Verifier.load(args.verifier)
            set_fix_gains(card, gains)
            card.save(args.verifier)
            for fix, kinds in gains.items():
                for kind, g in kinds.items():
                    verdict = "applied" if g["gain"] > 0 else "replaced by a fresh sample"
                    print(
                        f"fix {fix}, {kind} word flagged: {100 * g['gain']:+.1f} points vs a "
                        f"fresh sample [{100 * g['ci'][0]:+.1f}, {100 * g['ci'][1]:+.1f}], "
                        f"n {g['n']}: {verdict}"
                    )
        return code

    c.set_defaults(func=run)


def add_commands(sub) -> None:
    _extend_calibrate(sub)
    d = sub.add_parser(
        "demo",
        help="run the loop on held-out ShapesWorld prompts with the shipped models; "
        "writes an HTML report and a PNG grid",
    )
    d.add_argument("--out", default="clip4dm-demo", help="output folder (default clip4dm-demo)")
    d.add_argument(
        "--prompts", nargs="+", default=None, help="prompts (default: 6 held-out ShapesWorld ones)"
    )
    _add_loop_args(d, testbed=True)
    d.set_defaults(func=_cmd_demo, testbed_model=LOOP_DETECTOR)

    g = sub.add_parser(
        "generate",
        help="run the loop over a prompt file; images + one JSONL line per prompt, resumable, "
        "sharded under torchrun",
    )
    g.add_argument(
        "--prompts",
        required=True,
        help="UTF-8 text file, one prompt per line (empty or undecodable lines are skipped and "
        "named; results are keyed by line)",
    )
    g.add_argument(
        "--out",
        required=True,
        help="output folder: images/, results.jsonl (results-R-of-N.jsonl per rank under "
        "torchrun); reruns resume",
    )
    _add_loop_args(g)
    g.set_defaults(func=_cmd_generate, testbed_model=LOOP_DETECTOR)

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
    a.add_argument(
        "--verifier",
        default="auto",
        metavar="CARD|auto|none",
        help="the Generate tab's verifier card (as for demo; auto: the shipped pipeline's)",
    )
    add_detector_args(a, LOOP_DETECTOR)
    a.set_defaults(func=_cmd_app, testbed_model=LOOP_DETECTOR)


@contextmanager
def _no_loading_bars():
    """diffusers' and transformers' per-component loading bars off while a pipeline loads
    (the command's own progress bar is what the user watches)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    d_on, t_on = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if d_on:
            dlog.enable_progress_bar()
        if t_on:
            tlog.enable_progress_bar()


def load_pipeline(name: str, device: str):
    """A diffusers pipeline by shipped name, folder or hub id (`DiffusionPipeline`: whatever
    class its `model_index.json` names; `FeedbackPipeline` then picks the family's adapter)."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise Clip4dmError("the loop needs diffusers: pip install -e '.[generation]'") from None
    if name == SHIPPED_PIPELINE:
        from shapesworld.pipelines import load_pipeline as load_shipped

        try:
            with _no_loading_bars():
                return load_shipped(device=device)
        except FileNotFoundError as e:
            raise ModelLoadError(str(e)) from None
    from diffusers import DiffusionPipeline

    from feedback.hub import offline_if_unreachable, offline_message

    looks_local = name.startswith((".", "/", "~")) or os.sep in name and Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"pipeline folder not found: {name}")
    folder = Path(name).expanduser()
    if folder.is_dir() and not (folder / "model_index.json").is_file():  # e.g. a CLIP folder
        from .call_args import not_a_pipeline_folder

        raise ModelLoadError(not_a_pipeline_folder(name))
    offline = False
    try:
        with offline_if_unreachable() as offline, _no_loading_bars():
            pipe = DiffusionPipeline.from_pretrained(name)
    except Exception as e:  # diffusers raises many kinds; one line naming the pipeline
        hint = offline_message(name) if offline else str(e)[:300]
        raise ModelLoadError(f"could not load pipeline {name!r}: {hint}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def with_lora(pipe, lora: str | None, pipeline: str):
    """`pipe` with the LoRA `lora` (a shipped short name or a folder) loaded, or unchanged."""
    if not lora:
        return pipe
    from shapesworld.pipelines import lora_path, shipped_loras

    folder = lora_path(lora, pipeline) if pipeline == SHIPPED_PIPELINE else None
    from generation.finetune import load_trained
    from generation.finetune.trainable import trained_weights_file

    folder = folder or Path(lora).expanduser()
    if trained_weights_file(folder) is None:
        names = ", ".join(shipped_loras()) or "none shipped"
        raise ModelLoadError(
            f"--lora {lora}: neither a shipped LoRA ({names}) nor a folder holding "
            "pytorch_lora_weights.safetensors (or a recipe's whole-UNet result)"
        )
    try:
        load_trained(pipe, folder)  # stock load_lora_weights, or a stock UNet folder
    except Exception as e:  # diffusers/peft raise many kinds; one line naming the LoRA
        raise ModelLoadError(f"--lora {lora}: could not load it: {str(e)[:200]}") from None
    return pipe


def loop_detector_args(args):
    """The loop commands' detector settings, from the card in the pipeline's folder where
    the user gave none: the detector it names (else `DEFAULT_MODEL`), and the eps it
    calibrated for that detector on *generated* images."""
    card = pipeline_card(args.pipeline) if getattr(args, "pipeline", None) else None
    if args.model is None:
        args.model = (card.detector if card is not None else None) or DEFAULT_MODEL
        if card is not None and card.detector:
            print(f"detector: {args.model} (named by the pipeline's card)", file=sys.stderr)
    if args.threshold is None and card is not None:
        args.threshold = card.threshold_for(args.model)
    return args


def load_detector(args):
    """The loop's detector, loaded before the pipeline: a missing download stops the
    command in one line before any pipeline loads or image is made."""
    return build_detector(loop_detector_args(args))


def _fb(args, pipe, det=None):
    from .config import LoopConfig
    from .pipeline import FeedbackPipeline

    det = det if det is not None else load_detector(args)
    cfg = LoopConfig(strategy=args.strategy, max_images=args.budget, seed=args.seed)
    verifier = loop_verifier(args)
    try:
        return FeedbackPipeline(pipe, det, cfg, verifier=verifier)
    except ValueError as e:
        raise InputError(str(e)) from None


def _cmd_demo(args) -> int:
    from tqdm.auto import tqdm

    from shapesworld import judge
    from shapesworld.pipelines import prompt_set

    from .figures import to_pil, write_grid, write_html

    # Everything a user typed is checked before any model loads, and nothing is written
    # until the models are up.
    out = check_out_dir(args.out)
    prompts = check_prompts(args.prompts or [p.text for p in prompt_set(6)], "--prompts")
    call_kw = call_kwargs(args)  # a bad --pipeline-arg fails here, before any model loads
    t0 = time.perf_counter()
    det = load_detector(args)
    pipe = with_lora(load_pipeline(args.pipeline, args.device), args.lora, args.pipeline)
    fb = _fb(args, pipe, det)
    card = pipeline_card(args.pipeline)
    shapes = card is not None and card.testbed == "shapesworld"  # the oracle can judge it
    history = []
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "w", encoding="utf-8") as f:
        for i, prompt in enumerate(tqdm(prompts, desc="clip4dm demo", unit="prompt")):
            res = _run(fb, prompt, args, call_kw)
            history.append(res)
            f.write(json.dumps({"index": i, **res.to_dict()}) + "\n")
    from shapesworld.oracle import in_grammar, oracle_verdicts

    def oracle(image, prompt):  # judged only where the oracle can read the prompt
        return oracle_verdicts(image, prompt) if in_grammar(prompt) else ([], None)

    oracle = oracle if shapes else None
    html_path = write_html(history, out / "report.html", oracle=oracle)
    grid_path = write_grid(history, out / "grid.png")
    print(
        f"\n{'prompt':<52} {'imgs':>4} {'steps':>5}  {'flagged (kept image)':<20} "
        f"{'P(right)':>8}  {'oracle':<6}"
    )
    for h in history:
        r, k = h.best
        verdict = "-"
        if shapes and in_grammar(h.prompt):
            verdict = (
                "right" if judge(to_pil(h.rounds[r].images[k]), h.prompt).all_correct else "wrong"
            )
        flagged = ", ".join(h.best_report.misaligned_words) or "-"
        p = h.rounds[r].p_right[k] if k < len(h.rounds[r].p_right) else None
        p = "-" if p is None else f"{p:.2f}"
        print(
            f"{h.prompt[:52]:<52} {h.num_images:>4} {h.num_steps:>5}  {flagged[:20]:<20} "
            f"{p:>8}  {verdict:<6}"
        )
    print(f"\n{len(prompts)} prompts in {time.perf_counter() - t0:.1f} s")
    print(f"report: {html_path}\ngrid:   {grid_path}\njson:   {out / 'results.jsonl'}")
    return 0


def _run(fb, prompt: str, args, call_kw: dict):
    """One prompt through the loop (`call_kw`: `call_kwargs(args)`); the loop's input errors
    become one-line CLI errors."""
    try:
        return fb(
            prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            output_type="pt",
            **call_kw,
        ).history[0]
    except (ValueError, TypeError) as e:
        # a pipeline refusing an argument (--pipeline-arg) or an input: one line naming it
        raise InputError(str(e).splitlines()[0][:300]) from None


def check_out_dir(path: str) -> Path:
    """`--out` as a folder that can be made: fails before any model loads (a file in its way,
    a parent that is a file, a read-only parent), never creates it."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"--out is a file, not a folder: {p}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--out: {parent} is a file, so {p} cannot be made under it")
            if not os.access(parent, os.W_OK):
                raise InputError(f"--out: cannot write in {parent}")
            break
    return p


def check_prompts(prompts: list[str], where: str) -> list[str]:
    """Every prompt non-empty, before any model loads."""
    from .prompt_syntax import parse_prompt

    for i, p in enumerate(prompts):
        if not p.strip():
            raise InputError(f"{where}: prompt {i + 1} is empty; give each image a caption")
        if not parse_prompt(p).text.strip():
            raise InputError(
                f"{where}: prompt {i + 1} ({p!r}) is empty once its weight syntax is removed"
            )
    return list(prompts)


def read_prompts(path: str) -> dict[int, str]:
    """{0-based line number: prompt} of a prompt file, one prompt per line. Empty lines and
    lines that are not UTF-8 are skipped with one warning each kind, naming the lines; the
    others are generated (results are keyed by line, so fixing a line later and rerunning
    resumes the rest)."""
    import warnings

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"prompt file not found: {p}")
    prompts, empty, bad = {}, [], []
    for n, raw in enumerate(p.read_bytes().splitlines()):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            bad.append(n + 1)
            continue
        if n == 0:
            text = text.lstrip("\ufeff")  # a UTF-8 byte-order mark
        if text:
            prompts[n] = text
        else:
            empty.append(n + 1)
    if bad:
        warnings.warn(
            f"{p}: line{'s' if len(bad) > 1 else ''} {_lines(bad)} not UTF-8 text; skipped "
            "(save the file as UTF-8 to generate them)",
            stacklevel=2,
        )
    from .prompt_syntax import parse_prompt

    syntax_only = [n + 1 for n, t in prompts.items() if not parse_prompt(t).text.strip()]
    for n in syntax_only:
        del prompts[n - 1]
    if syntax_only:
        warnings.warn(
            f"{p}: skipped line(s) {_lines(syntax_only)}: empty once the weight syntax is removed",
            stacklevel=2,
        )
    if empty and prompts:
        warnings.warn(f"{p}: skipped {len(empty)} empty line(s) ({_lines(empty)})", stacklevel=2)
    if not prompts:
        raise InputError(f"{p} holds no prompts" + (" that are UTF-8 text" if bad else ""))
    return prompts


def _lines(ns: list[int]) -> str:
    return ", ".join(map(str, ns[:5])) + (f" and {len(ns) - 5} more" if len(ns) > 5 else "")


def results_name(rank: int, world: int) -> str:
    """`results.jsonl` for a one-process run (as `demo` writes); `results-R-of-N.jsonl` per
    rank under torchrun (each rank appends only to its own file)."""
    return "results.jsonl" if world == 1 else f"results-{rank}-of-{world}.jsonl"


def _done(out: Path) -> set[int]:
    done = set()
    for f in [*out.glob("results.jsonl"), *out.glob("results-*-of-*.jsonl")]:
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                done.add(int(json.loads(line)["index"]))
            except (json.JSONDecodeError, KeyError, ValueError, TypeError):
                continue  # a line cut by a kill: that prompt runs again
    return done


def _cmd_generate(args) -> int:
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .figures import to_pil

    out = check_out_dir(args.out)
    prompts = read_prompts(args.prompts)
    call_kw = call_kwargs(args)  # a bad --pipeline-arg fails here, before any model loads
    state = PartialState(cpu=args.device == "cpu")
    lines = sorted(prompts)
    mine = [i for k, i in enumerate(lines) if k % state.num_processes == state.process_index]
    (out / "images").mkdir(parents=True, exist_ok=True)
    done = _done(out)
    todo = [i for i in mine if i not in done]
    device = str(state.device) if args.device != "cpu" else "cpu"
    det = load_detector(args)
    pipe = with_lora(load_pipeline(args.pipeline, device), args.lora, args.pipeline)
    fb = _fb(args, pipe, det)
    adapter = fb.adapter.info(call_kw).to_dict()
    written = 0
    rank = f"{state.process_index}-of-{state.num_processes}"
    results = out / results_name(state.process_index, state.num_processes)
    if results.exists() and results.stat().st_size and not results.read_bytes().endswith(b"\n"):
        with open(results, "a", encoding="utf-8") as f:
            f.write("\n")  # a line cut by a kill stays alone (and is ignored), not glued
    with open(results, "a", encoding="utf-8") as f:
        for i in tqdm(todo, desc=f"clip4dm generate [{rank}]", disable=not state.is_main_process):
            fb.config.seed = args.seed + 1000 * i  # independent of sharding and resumes
            h = _run(fb, prompts[i], args, call_kw)
            for rec in h.rounds:
                for k, img in enumerate(rec.images):
                    to_pil(img).save(out / "images" / f"{i:05d}_r{rec.round}_{k}.png")
            r, k = h.best
            to_pil(h.rounds[r].images[k]).save(out / "images" / f"{i:05d}.png")
            row = {"index": i, "line": i + 1, **h.to_dict(), "adapter": adapter}
            f.write(json.dumps(row) + "\n")
            f.flush()
            written += 1
    summary = {
        "process_index": state.process_index,
        "num_processes": state.num_processes,
        "prompts": len(prompts),
        "assigned": len(mine),
        "skipped_done": len(mine) - len(todo),
        "written": written,
        "results": str(results),
    }
    print(json.dumps(summary))
    return 0


def _cmd_app(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from .app import App, launch
    except ImportError as e:
        raise Clip4dmError(f"the app needs gradio: pip install -e '.[app]' ({e})") from None
    import warnings

    det = load_detector(args)
    pipe = None if args.no_pipeline else load_pipeline(args.pipeline, args.device)
    # The web server stack (gradio, uvicorn, anyio) leaves event loops and upload handles to
    # the garbage collector on every request; those ResourceWarnings say nothing about the
    # user's request, so the app does not print them (our own code closes what it opens:
    # tests/test_app.py checks it).
    warnings.filterwarnings("ignore", category=ResourceWarning)
    print(f"clip4dm app on http://{args.host}:{args.port} (Ctrl+C stops it)")
    launch(App(det, pipe, verifier=loop_verifier(args)), host=args.host, port=args.port, block=True)
    return 0


def build_parser():
    """The whole `clip4dm` parser (the detector's commands and the loop's)."""
    return _feedback_parser([add_commands])


def main(argv: list[str] | None = None) -> int:
    """`clip4dm`: the detector's commands and the loop's."""
    return _feedback_main(argv, extra_commands=[add_commands])


if __name__ == "__main__":
    sys.exit(main())
