"""Command lines of the recipes: every field of a recipe's config dataclass is a flag (both
`--output-dir` and `--output_dir`, through transformers' `HfArgumentParser`), its docstring
is the flag's help, and `--config FILE` (JSON or YAML) sets fields from a file that the flags
then override."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
from pathlib import Path


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
        raise SystemExit(f"--config: no such file: {path}")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear line
        raise SystemExit(f"--config {path}: not valid {p.suffix or 'JSON'}: {e}") from None
    if not isinstance(values, dict):
        raise SystemExit(f"--config {path}: expected a mapping of field names to values")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SystemExit(f"--config {path}: unknown field(s) {unknown}; known: {sorted(names)}")
    return values


def parse_config(cls: type, argv: list[str] | None = None, description: str | None = None):
    """Parse `argv` (default: the process's) into an instance of dataclass `cls`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        cls, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="JSON or YAML file of field values")
    docs = field_docs(cls)
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for action in parser._actions:
        if action.dest in docs:
            action.help = f"{docs[action.dest]} (default: {action.default})"
        if str(types.get(action.dest)).startswith(("dict", "<class 'dict'>")):
            action.type = json.loads  # dict fields take JSON on the command line
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)  # the file's values become the flags' defaults
    if known.config:
        parser.set_defaults(**_load_file(known.config, set(types)))
    cfg, *_ = parser.parse_args_into_dataclasses(argv)
    return cfg
