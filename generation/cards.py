"""A pipeline's clip4dm card: what was measured for the loop on this generator, kept in the
pipeline's own folder and read from wherever the pipeline is loaded (never by its name).

`<folder>/model_card.json` may hold:
- `call_defaults`: the sampling settings the generator was trained or tuned for
  (`num_inference_steps`, `guidance_scale`, `height`, `width`), used where the caller gives
  none (else the pipeline's own call defaults apply);
- `loop_thresholds`: per detector name, the eps calibrated on this generator's images
  (`clip4dm calibrate`), used where no eps is given;
- `detector`: the detector those calibrations and the verifier card were made with;
- `testbed`: "shapesworld" where the generator draws ShapesWorld scenes (the demo's oracle
  can then judge its images).
`<folder>/verifier.json` is the verifier card (`generation.verifier`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

CARD_FILE = "model_card.json"
#: the call arguments a card may set
CALL_DEFAULT_KEYS = ("num_inference_steps", "guidance_scale", "height", "width")


def pipeline_folder(pipe) -> Path | None:
    """The local folder `pipe` was loaded from (`name_or_path`), or None (a hub id not in a
    folder, or a pipeline built in memory)."""
    root = getattr(pipe, "name_or_path", None)
    if root is None:
        root = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    if not isinstance(root, (str, Path)) or not str(root):
        return None
    path = Path(root).expanduser()
    return path if path.is_dir() else None


@dataclass
class PipelineCard:
    """What `<folder>/model_card.json` says for the loop (see the module docstring)."""

    folder: Path
    call_defaults: dict = field(default_factory=dict)
    loop_thresholds: dict = field(default_factory=dict)
    detector: str | None = None
    testbed: str | None = None

    @classmethod
    def load(cls, folder: str | Path) -> PipelineCard | None:
        """The card in `folder`, or None when it holds none."""
        folder = Path(folder).expanduser()
        path = folder / CARD_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a readable JSON card: {e}") from None
        cals = dict(data.get("loop_thresholds") or {})
        first = data.get("loop_threshold") or {}
        if first.get("detector"):
            cals.setdefault(first["detector"], first)
        unknown = set(data.get("call_defaults") or {}) - set(CALL_DEFAULT_KEYS)
        if unknown:
            raise ValueError(
                f"{path}: call_defaults names {sorted(unknown)}; a card may set "
                f"{', '.join(CALL_DEFAULT_KEYS)}"
            )
        return cls(
            folder,
            dict(data.get("call_defaults") or {}),
            cals,
            data.get("detector"),
            data.get("testbed"),
        )

    @classmethod
    def find(cls, pipe) -> PipelineCard | None:
        """The card beside `pipe`'s weights, or None."""
        folder = pipeline_folder(pipe)
        return cls.load(folder) if folder is not None else None

    def threshold_for(self, detector: str) -> float | None:
        """The eps calibrated for `detector` on this generator's images, or None."""
        cal = self.loop_thresholds.get(detector)
        return None if cal is None else cal.get("threshold")
