"""Region proposals from a zero-shot object detector (OWLv2, OWL-ViT, Grounding DINO) through
transformers' `zero-shot-object-detection` pipeline, queried with each phrase's noun."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..errors import ModelLoadError
from .geometry import Box
from .structure import PromptStructure

logger = logging.getLogger(__name__)


class ZeroShotProposer:
    """`(images, structures) -> per image boxes`: the detector's boxes for every phrase's noun
    (the `top_k` best per noun above `threshold`), in pixels of the image.

    model: a hub id ("google/owlv2-base-patch16-ensemble", "IDEA-Research/grounding-dino-tiny")
        or a local folder saved with `save_pretrained`; device: where it runs.
    """

    def __init__(
        self,
        model: str,
        *,
        threshold: float = 0.1,
        top_k: int = 5,
        device: str | torch.device | None = None,
    ):
        from transformers import pipeline

        try:
            self.pipe = pipeline("zero-shot-object-detection", model=model, device=device)
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"could not load the zero-shot detector {model!r} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}); give a hub id that is cached or reachable, "
                "or a folder saved with save_pretrained"
            ) from None
        self.threshold = threshold
        self.top_k = top_k

    def __call__(
        self, images: torch.Tensor, structures: Sequence[PromptStructure]
    ) -> list[list[Box]]:
        from torchvision.transforms.functional import to_pil_image

        out = []
        for img, st in zip(images, structures):
            nouns = sorted({p.noun for p in st.phrases})
            pil = to_pil_image(img.detach().float().clamp(0, 1).cpu())
            found = self.pipe(pil, candidate_labels=nouns, threshold=self.threshold)
            boxes: list[Box] = []
            for noun in nouns:
                hits = sorted((d for d in found if d["label"] == noun), key=lambda d: -d["score"])[
                    : self.top_k
                ]
                for d in hits:
                    b = d["box"]
                    box = (float(b["xmin"]), float(b["ymin"]), float(b["xmax"]), float(b["ymax"]))
                    if box[2] > box[0] and box[3] > box[1] and box not in boxes:
                        boxes.append(box)
            logger.debug("zero-shot detector: %d boxes for %s", len(boxes), nouns)
            out.append(boxes)
        return out
