"""MkDocs hooks (mkdocs.yml `hooks:`): the command-line reference, generated at build time
from the argparse parsers themselves (never copied by hand), and the snippet runner's
`# docs: no-run` marker taken out of the rendered code.

- `<!-- cli:clip4dm -->` becomes `clip4dm --help` and every subcommand's `--help`;
- `<!-- cli:recipes -->` becomes each fine-tuning recipe's `--help` (its config dataclass's
  fields, as `recipes.cli.parse_config` builds the parser).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NO_RUN = re.compile(r"^(\s*)# docs: no-run[^\n]*\n", re.M)
RECIPES = [
    "finetune_reward_filtered",
    "finetune_loop_distill",
    "finetune_ddpo",
    "finetune_grpo",
    "finetune_relabel",
    "finetune_anchors_only",
]


def _fence(text: str) -> str:
    return "```text\n" + text.rstrip() + "\n```\n"


def clip4dm_reference() -> str:
    """`clip4dm --help` and each subcommand's, in the parser's order."""
    from generation.cli import build_parser

    parser = build_parser()
    out = ["## `clip4dm`", "", _fence(parser.format_help())]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        out += [f"## `clip4dm {name}`", "", _fence(p.format_help())]
    return "\n".join(out)


def recipe_help(module_name: str) -> str:
    """`python recipes/NAME.py --help`, in this process."""
    from generation.finetune import RoundsConfig
    from recipes.cli import parse_config

    mod = importlib.import_module(f"recipes.{module_name}")
    cls = next(
        v
        for v in vars(mod).values()
        if isinstance(v, type) and issubclass(v, RoundsConfig) and v.__module__ == mod.__name__
    )
    argv0, buf = sys.argv[0], io.StringIO()
    sys.argv[0] = f"recipes/{module_name}.py"
    try:
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            parse_config(cls, ["--help"], description=mod.__doc__)
    finally:
        sys.argv[0] = argv0
    return buf.getvalue()


def recipes_reference() -> str:
    out = []
    for name in RECIPES:
        out += [f"## `recipes/{name}.py`", "", _fence(recipe_help(name))]
    return "\n".join(out)


MARKERS = {"<!-- cli:clip4dm -->": clip4dm_reference, "<!-- cli:recipes -->": recipes_reference}


def on_config(config, **kwargs):
    os.environ["COLUMNS"] = "100"  # argparse wraps help to this width: the same on every build
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return config


def on_page_markdown(markdown: str, page=None, **kwargs) -> str:
    for marker, render in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return NO_RUN.sub("", markdown)
