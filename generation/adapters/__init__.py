"""Pipeline adapters: one small protocol (`PipelineAdapter`) and one adapter per family.

`adapter_for(pipe)` picks by the pipeline's class (over its MRO) *and* the components that
family needs, never by one attribute alone (FLUX and SD3 have a `text_encoder_2` too); anything
else that takes `prompt`/`generator`/`output_type` gets the generic adapter. An explicit
`adapter=` (family name, class or instance) overrides the choice.
"""

from __future__ import annotations

from .base import AdapterInfo, Capabilities, PipelineAdapter, TextSlot, as_image_tensor
from .flux import FluxAdapter
from .generic import GenericAdapter
from .pixart import PixArtAdapter
from .sana import SanaAdapter
from .sd import SDAdapter
from .sd3 import SD3Adapter
from .sdxl import SDXLAdapter

#: Family name -> adapter class, in matching order (generic last).
ADAPTERS: dict[str, type[PipelineAdapter]] = {
    a.family: a
    for a in (
        SDAdapter,
        SDXLAdapter,
        SD3Adapter,
        FluxAdapter,
        PixArtAdapter,
        SanaAdapter,
        GenericAdapter,
    )
}


def adapter_for(pipe, adapter: str | type[PipelineAdapter] | PipelineAdapter | None = None):
    """The adapter for `pipe` (see module docstring). Raises `ValueError` naming the problem
    for an object that is not a text-to-image pipeline or an unknown family name."""
    if isinstance(adapter, PipelineAdapter):
        return adapter
    if isinstance(adapter, str):
        if adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {adapter!r}; choose one of {sorted(ADAPTERS)}")
        return ADAPTERS[adapter](pipe)
    if isinstance(adapter, type) and issubclass(adapter, PipelineAdapter):
        return adapter(pipe)
    if adapter is not None:
        raise ValueError(f"adapter must be a family name, class or instance, got {adapter!r}")
    for cls in ADAPTERS.values():
        if cls.matches(pipe):
            return cls(pipe)
    families = ", ".join(a.title for a in ADAPTERS.values() if a.family != "generic")
    raise ValueError(
        f"unsupported pipeline {type(pipe).__name__}: FeedbackPipeline wraps diffusers "
        f"text-to-image pipelines ({families}, or any whose call takes `prompt`, `generator` "
        "and `output_type`)"
    )


__all__ = [
    "ADAPTERS",
    "AdapterInfo",
    "Capabilities",
    "FluxAdapter",
    "GenericAdapter",
    "PipelineAdapter",
    "PixArtAdapter",
    "SD3Adapter",
    "SDAdapter",
    "SDXLAdapter",
    "SanaAdapter",
    "TextSlot",
    "adapter_for",
    "as_image_tensor",
]
