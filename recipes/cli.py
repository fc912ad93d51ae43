"""Command lines of the recipes: every field of a recipe's config dataclass is a flag (both
`--output-dir` and `--output_dir`, through transformers' `HfArgumentParser`; no abbreviations,
so `--prompts` is never "ambiguous"), its docstring and default are the flag's help, and
`--config FILE` (JSON or YAML) sets fields from a file that the flags then override.

Errors (a bad flag value, a config field out of range, a missing model): one line
`<recipe>: error: ...` on stderr and exit status 2 (`fail`, `run_recipe`). Run alone
(`python recipes/x.py`, one process) that line is all; `accelerate launch` adds its own
wrapper message after it (a `CalledProcessError` traceback, exit 1), which
`accelerate launch -q` reduces to exit 1 without the traceback."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


def fail(message: str) -> NoReturn:
    """One line `<recipe>: error: message` on stderr, exit status 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def run_recipe(main: Callable, parse: Callable, *, threads: int | None = None) -> None:
    """`parse()` then `main(cfg)`, printing its JSON result (a dict, or what its `to_dict()`
    returns: `generation.finetune.RoundsResult`); the errors a user can cause
    (ValueError from a config or a check, a model that does not load, a missing file) become
    `fail`'s one line."""
    from feedback.errors import Clip4dmError

    if threads:
        import torch

        torch.set_num_threads(threads)
    cfg = parse()
    try:
        result = main(cfg)
    except (Clip4dmError, ValueError, FileNotFoundError) as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if hasattr(result, "to_dict"):
        result = result.to_dict()
    if result is not None:
        # one write of the whole line: ranks of a torchrun job share stdout, and print's
        # separate write of "\n" let another rank's line land in between (two JSON objects
        # on one line)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a dataclass's fields (`x: int = 1` then `\"\"\"doc\"\"\"`),
    through its base classes; a subclass's doc wins."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for a, b in zip(body, body[1:]):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _load_file(path: str, names: set[str]) -> dict:
    p = Path(path)
    if not p.is_file():
        fail(f"--config: no such file: {path}")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear line
        fail(f"--config {path}: not valid {p.suffix or 'JSON'}: {e}")
    if not isinstance(values, dict):
        fail(f"--config {path}: expected a mapping of field names to values")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        fail(f"--config {path}: unknown field(s) {unknown}; known: {sorted(names)}")
    return values


def parse_config(cls: type, argv: list[str] | None = None, description: str | None = None):
    """Parse `argv` (default: the process's) into an instance of dataclass `cls`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        cls, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # Both spellings of every flag are registered; a prefix of one would be "ambiguous".
    parser.allow_abbrev = False
    # "-5e-5" is a value (argparse's own matcher only knows -5 and -0.5): `--eps -5e-5` works
    parser._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
    parser.add_argument("--config", default=None, help="JSON or YAML file of field values")
    docs = field_docs(cls)
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for action in parser._actions:
        if action.dest in docs:
            action.help = f"{docs[action.dest]} (default: {action.default})"
        elif action.dest in types:
            action.help = f"(default: {action.default})"
        if str(types.get(action.dest)).startswith(("dict", "<class 'dict'>")):
            action.type = json.loads  # dict fields take JSON on the command line
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)  # the file's values become the flags' defaults
    if known.config:
        parser.set_defaults(**_load_file(known.config, set(types)))
    try:
        cfg, *_ = parser.parse_args_into_dataclasses(argv)
    except ValueError as e:  # a field's __post_init__ check: one line naming the field
        fail(str(e))
    return cfg
