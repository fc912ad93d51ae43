"""`--pipeline-arg KEY=VALUE` checked against the pipeline's call before any model loads.

The pipeline's class is read from its `model_index.json` (`_class_name`): a local folder's,
or a hub id's when the file is already in the Hugging Face cache (nothing is downloaded;
without it the check is skipped and loading says what is wrong). The class's `__call__`
signature then says which names it takes and what type each one is. An unknown name, or a
value whose type cannot fit the annotation, becomes one `InputError` line instead of a
TypeError from deep inside the pipeline.

Types are checked loosely, as JSON gives them: `null` fits every parameter (diffusers takes
None for many parameters whose annotation does not say so), an int fits a float, a JSON
array fits a list or a tuple (and is passed as a tuple there), an object fits a dict, and
annotations the command line cannot express (tensors, images, callbacks) fit nothing.
"""

from __future__ import annotations

import collections.abc as cabc
import difflib
import inspect
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path

from feedback.errors import InputError, ModelLoadError

__all__ = [
    "check_call_args",
    "check_pipeline_args",
    "fits",
    "is_local",
    "model_index_file",
    "not_a_pipeline_folder",
    "pipeline_class",
    "type_name",
]

_EMPTY = inspect.Parameter.empty
_SEQUENCES = (list, tuple, set, frozenset, cabc.Sequence, cabc.MutableSequence, cabc.Iterable)
_MAPPINGS = (dict, cabc.Mapping, cabc.MutableMapping)


def is_local(name: str) -> bool:
    """Whether `--pipeline NAME` means a folder on this machine rather than a hub id."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def not_a_pipeline_folder(folder: str | Path) -> str:
    """The one line said for a folder that has no `model_index.json`, naming what it holds
    when that is recognisable (a CLIP belongs to --model)."""
    p = Path(folder).expanduser()
    hint = ""
    config = p / "config.json"
    if (p / "open_clip_config.json").is_file():
        hint = "; it holds an OpenCLIP model (a detector: give it to --model)"
    elif config.is_file():
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = {}
        kind = str(cfg.get("model_type", "")) if isinstance(cfg, dict) else ""
        if "clip" in kind.lower():
            hint = "; it holds a transformers CLIP model (a detector: give it to --model)"
        else:
            hint = "; it holds a single model's config.json, not a whole pipeline"
    return f"--pipeline {folder}: not a diffusers pipeline folder (no model_index.json){hint}"


def model_index_file(name: str) -> Path | None:
    """The `model_index.json` of pipeline `name`.

    A local folder's own (ModelLoadError when the folder has none; None when the folder does
    not exist, which loading reports); for a hub id, the cached copy if there is one (None
    otherwise: nothing is downloaded here).
    """
    if is_local(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            return None
        index = folder / "model_index.json"
        if not index.is_file():
            raise ModelLoadError(not_a_pipeline_folder(name))
        return index
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(name, "model_index.json", local_files_only=True))
    except Exception:  # not cached, not a valid repo id, no huggingface_hub: no check
        return None


def pipeline_class(name: str) -> type | None:
    """The diffusers class named by pipeline `name`'s `model_index.json` `_class_name`, or
    None when that cannot be known without loading (no cached index, an unreadable one, a
    class diffusers does not export)."""
    index = model_index_file(name)
    if index is None:
        return None
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None  # loading says what is wrong with the file
    if not isinstance(class_name, str) or not class_name.isidentifier():
        return None
    try:
        import diffusers

        cls = getattr(diffusers, class_name, None)
    except Exception:  # diffusers missing or its lazy import failing: loading reports it
        return None
    return cls if isinstance(cls, type) else None


def _call_parameters(cls: type) -> dict[str, inspect.Parameter] | None:
    """The named parameters of `cls.__call__` (without self), annotations evaluated where
    possible; None when the class defines no informative call (only *args/**kwargs)."""
    call = inspect.getattr_static(cls, "__call__", None)
    if call is None or not callable(call):
        return None
    try:
        sig = inspect.signature(call, eval_str=True)
    except Exception:  # an annotation that does not evaluate here: keep them as text
        try:
            sig = inspect.signature(call)
        except (TypeError, ValueError):
            return None
    named = {
        n: p
        for n, p in sig.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
    }
    return named or None


def type_name(annotation: object) -> str:
    """A short readable name of a type annotation (`int`, `str | list[str]`, `torch.Tensor`)."""
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Ellipsis:
        return "..."
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is cabc.Callable:
        return "Callable"
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args if not isinstance(a, list))
        return f"{type_name(origin)}[{inner}]" if inner else type_name(origin)
    if isinstance(annotation, type):
        module = annotation.__module__.split(".")[0]
        if module in ("builtins", "typing", "collections"):
            return annotation.__name__
        return f"{module}.{annotation.__name__}"
    return str(annotation).replace("typing.", "")


def fits(value: object, annotation: object) -> bool:
    """Whether a JSON value (None, bool, int, float, str, list, dict) can be passed where
    `annotation` is declared: loosely, see the module's docstring."""
    if value is None or annotation is _EMPTY or annotation is typing.Any:
        return True
    if isinstance(annotation, (str, typing.TypeVar, typing.ForwardRef)):
        return True  # an annotation we cannot read: not checked
    if annotation is type(None):
        return False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(fits(value, a) for a in args)
    if origin is typing.Annotated:
        return fits(value, args[0])
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is cabc.Callable:
        return callable(value)
    if origin in _SEQUENCES:
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(fits, value, args))
        return not args or all(fits(v, args[0]) for v in value)
    if origin in _MAPPINGS:
        if not isinstance(value, dict):
            return False
        return len(args) != 2 or all(fits(v, args[1]) for v in value.values())
    if origin is not None:
        return True  # another generic: not checked
    if not isinstance(annotation, type):
        return True
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in _SEQUENCES:
        return isinstance(value, list)
    if annotation in _MAPPINGS:
        return isinstance(value, dict)
    try:
        return isinstance(value, annotation)
    except TypeError:  # a class isinstance cannot test (a non-runtime Protocol): not checked
        return True


def _as_tuple(value: object, annotation: object) -> bool:
    """Whether a JSON array for `annotation` must be passed as a tuple: it fits a tuple arm of
    the annotation and no list-like one (`original_size: tuple[int, int] | None`)."""
    if not isinstance(value, list):
        return False
    arms = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    fitting = [a for a in arms if a is not type(None) and fits(value, a)]
    return bool(fitting) and all((typing.get_origin(a) or a) is tuple for a in fitting)


def _is_union(annotation: object) -> bool:
    origin = typing.get_origin(annotation)
    return origin is typing.Union or origin is types.UnionType


def _shown(value: object) -> str:
    """The value as the user typed it (a string as is, anything else as JSON), cut short."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "an array" if isinstance(value, list) else "an object"
    )


def check_pipeline_args(
    cls: type, kwargs: Mapping[str, object], *, own: Iterable[str] = ()
) -> dict[str, object]:
    """`kwargs` (from --pipeline-arg) checked against `cls.__call__`: each name must be one of
    its named parameters and each value must fit that parameter's annotation (`fits`); JSON
    arrays for tuple parameters become tuples. `own`: names the command sets itself (left
    out of the list of names offered). Raises InputError in one line; returns the kwargs as
    they are to be passed. A class without an informative call signature is not checked.

    Diffusers' `__call__(..., **kwargs)` only catches deprecated callbacks and drops anything
    else without a word, so a name outside the named parameters is refused there too.
    """
    params = _call_parameters(cls)
    if params is None:
        return dict(kwargs)
    own = set(own)
    out: dict[str, object] = {}
    for key, value in kwargs.items():
        arg = f"--pipeline-arg {key}={_shown(value)}"
        if key not in params:
            offered = [n for n in params if n not in own]
            close = difflib.get_close_matches(key, offered, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(
                f"{arg}: {cls.__name__}'s call takes no {key!r} ({guess}it takes: "
                f"{', '.join(offered)})"
            )
        annotation = params[key].annotation
        if not fits(value, annotation):
            hint = ""
            if not isinstance(value, str) and fits(str(value), annotation):
                hint = f"; for the text, quote it as JSON: {key}='\"{_shown(value)}\"'"
            raise InputError(
                f"{arg}: {cls.__name__}'s {key} takes {type_name(annotation)}, got "
                f"{_json_kind(value)}{hint}"
            )
        out[key] = tuple(value) if _as_tuple(value, annotation) else value
    return out


def check_call_args(
    name: str | None, kwargs: Mapping[str, object], *, own: Iterable[str] = ()
) -> dict[str, object]:
    """What the command line can check of pipeline `name` (a folder or hub id; None: nothing
    to check) before any model loads: a local folder must hold a model_index.json
    (ModelLoadError in one line), and `kwargs` must fit the call of the class it names
    (`check_pipeline_args`; not checked when the class cannot be known without loading).
    Returns the kwargs as they are to be passed."""
    if name is None:
        return dict(kwargs)
    if is_local(name):
        model_index_file(name)  # a folder that is no pipeline (a CLIP, say) stops here
    cls = pipeline_class(name) if kwargs else None
    return dict(kwargs) if cls is None else check_pipeline_args(cls, kwargs, own=own)
