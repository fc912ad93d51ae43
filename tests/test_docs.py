"""The README and the docs site: short README with both commands, every Python snippet runs,
every shell flag exists, every public name is in the API reference, and every figure comes
from a results file (docs/render_results.py)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import linecache
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS_PAGES = DOCS / "results"
#: Where snippets take long (training): run with the slow tests only.
SLOW_PAGES = {"docs/how-to/fine-tuning.md"}
#: A snippet whose first line starts with this is compiled, not run (it downloads models).
NO_RUN = "# docs: no-run"
#: Packages whose `__all__` the API reference must cover.
PUBLIC = [
    "feedback",
    "feedback.backends",
    "feedback.cli",
    "feedback.regions",
    "generation",
    "generation.adapters",
    "generation.finetune",
    "generation.strategies",
]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod


render = _load("render_results", DOCS / "render_results.py")
hooks = _load("docs_hooks", DOCS / "_hooks" / "docs_hooks.py")


def pages(include_results: bool = False) -> list[Path]:
    """The README and every hand-written docs page (the Results pages are generated)."""
    out = [README]
    for p in sorted(DOCS.rglob("*.md")):
        if include_results or RESULTS_PAGES not in p.parents:
            out.append(p)
    return out


FENCE = re.compile(r"^( *)```(\w+)[^\n]*\n(.*?)^\1```", re.S | re.M)


def blocks(path: Path, lang: str) -> list[str]:
    """The fenced code blocks of `lang` in `path`, dedented (tabbed blocks are indented)."""
    out = []
    for m in FENCE.finditer(path.read_text()):
        if m.group(2) == lang:
            indent = len(m.group(1))
            out.append("\n".join(line[indent:] for line in m.group(3).splitlines()) + "\n")
    return out


def rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _page_param(p: Path):
    marks = [pytest.mark.slow] if rel(p) in SLOW_PAGES else []
    return pytest.param(p, id=rel(p), marks=marks)


# ------------------------------------------------------------------------- the README


def test_the_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= 250, f"README.md has {n} lines; the rest belongs in docs/"


def _readme_commands() -> tuple[str, str]:
    bash = blocks(README, "bash")
    main = next(b.strip() for b in bash if "clip4dm demo" in b)
    tests = next(b.strip() for b in bash if "pytest" in b)
    return main, tests


def test_the_readme_holds_both_commands_and_ci_runs_its_test_command():
    main, tests = _readme_commands()
    assert main == (
        'python3 -m venv .venv && .venv/bin/pip install -q -e ".[generation]" && '
        ".venv/bin/clip4dm demo --out clip4dm-demo"
    )
    assert tests == (
        'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && '
        ".venv/bin/python -m pytest -q -p no:cacheprovider"
    )
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for part in tests.split(" && "):  # each step, in order, as its own line
        assert any(line == part or line.startswith(part + " ||") for line in ci), part
    steps = [next(i for i, ln in enumerate(ci) if ln.startswith(p)) for p in tests.split(" && ")]
    assert steps == sorted(steps)


def test_ci_builds_the_docs_with_the_readmes_command():
    assert "mkdocs build --strict" in README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in ci
    assert ci.index("mkdocs build --strict") > ci.index("-m pytest")


def test_the_docs_tools_are_in_the_docs_and_dev_extras():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in ("docs", "dev"):
        names = {re.split(r"[<>=\[ ]", r)[0].lower() for r in extras[extra]}
        assert {"mkdocs", "mkdocs-material", "mkdocstrings"} <= names, extra


# ------------------------------------------------------------------------- snippets


@pytest.mark.parametrize("page", [_page_param(p) for p in pages() if blocks(p, "python")])
def test_every_python_snippet_runs(page, tmp_path, monkeypatch):
    """Each page's snippets run in order in one namespace, offline (the ShapesWorld models);
    a `# docs: no-run` snippet (real models) is compiled only."""
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__docs__"}
    ran = 0
    for i, code in enumerate(blocks(page, "python")):
        name = f"{rel(page)}[python block {i}]"
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # tracebacks
        compiled = compile(code, name, "exec")
        if code.lstrip().startswith(NO_RUN):
            continue
        exec(compiled, ns)  # noqa: S102 - the docs' own examples
        ran += 1
    assert ran, f"{rel(page)}: every snippet is no-run; add the offline variant beside it"


def test_every_no_run_snippet_has_an_offline_variant_on_its_page():
    for page in pages():
        py = blocks(page, "python")
        if any(b.lstrip().startswith(NO_RUN) for b in py):
            assert any(not b.lstrip().startswith(NO_RUN) for b in py), rel(page)
        for b in py:
            if b.lstrip().startswith(NO_RUN):
                assert re.match(r"# docs: no-run \(.+\)", b.lstrip()), (
                    f"{rel(page)}: say why a snippet is not run: '# docs: no-run (reason)'"
                )


def _commands(script: str):
    """Each command of a shell snippet as tokens (continuations joined, comments dropped)."""
    script = script.replace("\\\n", " ")
    for line in script.splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                tokens = shlex.split(part, comments=True)
            except ValueError:
                continue
            if tokens:
                yield tokens


def _clip4dm_options() -> dict[str, set[str]]:
    from generation.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()
    }


def _unknown_flags(tokens: list[str], clip4dm: dict, recipes: dict) -> list[str]:
    """The flags of one command that its parser does not know ([] for other commands)."""
    for i, t in enumerate(tokens):
        if Path(t).name == "clip4dm" or tokens[i : i + 2] == ["-m", "feedback.cli"]:
            rest = tokens[i + 1 :] if t != "-m" else tokens[i + 2 :]
            if not rest or rest[0].startswith("-"):
                return []
            sub, args = rest[0], rest[1:]
            if sub not in clip4dm:
                return [f"clip4dm {sub}: no such command"]
            known, label = clip4dm[sub], f"clip4dm {sub}"
        elif m := re.fullmatch(r"(?:.*/)?recipes/(finetune_\w+)\.py", t):
            if m.group(1) not in recipes:
                help_text = hooks.recipe_help(m.group(1))
                recipes[m.group(1)] = set(re.findall(r"--[\w-]+", help_text))
            known, label, args = recipes[m.group(1)], t, tokens[i + 1 :]
        else:
            continue
        flags = [a.split("=")[0] for a in args if a.startswith("--")]
        return [f"{label} {f}" for f in flags if f not in known]
    return []


def test_every_shell_flag_in_the_docs_exists():
    """`clip4dm SUB --flag` and `recipes/NAME.py --flag` in the README's and the docs' shell
    snippets are flags their parsers accept (a renamed flag fails here, not for a reader)."""
    clip4dm, recipes, bad = _clip4dm_options(), {}, []
    for page in pages(include_results=True):
        for script in blocks(page, "bash"):
            for tokens in _commands(script):
                bad += [f"{rel(page)}: {x}" for x in _unknown_flags(tokens, clip4dm, recipes)]
    assert not bad, "flags the parsers do not know:\n" + "\n".join(bad)


# ------------------------------------------------------------------------- reference


def _documented() -> tuple[set[str], str]:
    text = "\n".join(p.read_text() for p in sorted((DOCS / "reference").glob("*.md")))
    return set(re.findall(r"^::: ([\w.]+)\s*$", text, re.M)), text


def _resolve(path: str):
    parts = path.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def test_every_public_name_is_in_the_api_reference():
    """peft's doc-coverage check: each name of each public package's `__all__` has an entry
    (`::: package.name`) in docs/reference/, or is a re-export of a documented object that
    the page names (`` `package.name` ``)."""
    documented, text = _documented()
    by_id = {}
    for path in documented:
        try:
            by_id.setdefault(id(_resolve(path)), path)
        except (ImportError, AttributeError):
            pass
    missing = []
    for pkg in PUBLIC:
        mod = importlib.import_module(pkg)
        for name in mod.__all__:
            full = f"{pkg}.{name}"
            if full in documented:
                continue
            obj = getattr(mod, name)
            if id(obj) in by_id and f"`{full}`" in text and not isinstance(obj, (int, str, float)):
                continue
            missing.append(full)
    assert not missing, (
        "public names with no entry in docs/reference/*.md (add `::: NAME` where it belongs):\n"
        + "\n".join(missing)
    )


def test_every_reference_entry_is_public_and_importable():
    documented, _ = _documented()
    for path in documented:
        _resolve(path)  # a stale entry fails here (and `mkdocs build --strict` fails on it)


def test_the_cli_reference_is_generated_from_every_parser():
    text = hooks.clip4dm_reference()
    for sub, opts in _clip4dm_options().items():
        assert f"## `clip4dm {sub}`" in text
        assert all(o in text for o in opts if o.startswith("--")), sub
    assert "--output-dir" in hooks.recipe_help("finetune_grpo")
    assert "<!-- cli:clip4dm -->" in (DOCS / "reference" / "cli.md").read_text()
    assert "<!-- cli:recipes -->" in (DOCS / "reference" / "recipes.md").read_text()


# ------------------------------------------------------------------------- results


def test_the_results_pages_and_quoted_tables_are_rendered_from_results():
    """docs/results/*.md, the README's headline table and every `<!-- results:NAME -->` block
    are exactly what docs/render_results.py makes of results/*.json."""
    stale = render.stale()
    assert not stale, "out of date with results/ (run python docs/render_results.py): " + ", ".join(
        rel(p) for p in stale
    )


FIGURE = re.compile(
    r"[+\-−]\d+\.\d+ \[[+\-−]?\d+\.\d+, [+\-−]?\d+\.\d+\]"  # a difference with its interval
    r"|\d+\.\d+%"  # a percentage with decimals
)


def _prose(text: str) -> str:
    text = render.MARK.sub("", text)  # rendered blocks are checked by the test above
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def test_every_figure_quoted_in_the_docs_comes_from_a_results_file():
    """An interval or a percentage written in the README's or the docs' prose must be one of
    the figures rendered from results/ (a figure typed by hand that a new run changed fails)."""
    recs = render.load()
    corpus = "\n".join(render.outputs(recs).values())
    bad = []
    for page in pages():
        for fig in FIGURE.findall(_prose(page.read_text())):
            if fig not in corpus:
                bad.append(f"{rel(page)}: {fig}")
    assert not bad, "figures not found in any results file:\n" + "\n".join(bad)


def test_every_results_file_records_what_made_it():
    recs = render.load()
    assert recs, "no results files"
    for name, rec in recs.items():
        for key in ("title", "date", "command", "machine", "commit", "source", "status"):
            assert rec.get(key), f"results/{name}.json: no {key}"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", rec["date"]), name
        assert render.tables(rec), f"results/{name}.json: no table"
        if name.startswith("superseded/"):
            assert rec["status"] == "superseded", name
        else:
            assert rec["status"] in ("current", "provisional"), name
            assert rec.get("page") in render.PAGES, f"results/{name}.json: page"


def test_results_io_writes_metadata_and_keeps_what_it_replaces(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import results_io
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    argv = ["benchmarks/x.py", "--results", "x"]
    table = [results_io.tables_from(["row", "value"], [["a", 1.5]])]
    assert results_io.save_result(None, {}, kind="x", results_dir=tmp_path) is None
    first = results_io.save_result(
        "x", {"a": 1}, kind="x", tables=table, argv=argv, results_dir=tmp_path
    )
    rec = json.loads(first.read_text())
    assert rec["command"] == "python benchmarks/x.py --results x"
    assert rec["date"] and rec["machine"]["cpu_count"] and rec["source"] == "benchmark"
    assert rec["tables"][0]["rows"] == [["a", "1.5"]]
    rec["findings"] = "written by a person"
    first.write_text(json.dumps(rec))
    results_io.save_result("x", {"a": 2}, kind="x", tables=table, argv=argv, results_dir=tmp_path)
    new = json.loads(first.read_text())
    assert new["data"] == {"a": 2} and new["findings"] == "written by a person"
    (old,) = (tmp_path / "superseded").glob("x-*.json")
    assert json.loads(old.read_text())["status"] == "superseded"
