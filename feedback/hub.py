"""Reaching the Hugging Face hub: find out early whether it is reachable, and load offline.

Without a network, huggingface_hub retries each file for tens of seconds before failing. We
probe the endpoint once (a TCP connect with a short timeout) and, when it cannot be reached,
run the load in huggingface_hub's offline mode: cached files still load, and a missing one
fails at once, which the backends turn into one line.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

_REACHABLE: dict[str, bool] = {}


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the hub endpoint accepts a TCP connection within `timeout` seconds (cached per
    endpoint for the process). False at once when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = _endpoint()
    if url not in _REACHABLE:
        u = urlparse(url)
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            with socket.create_connection((u.hostname or "", port), timeout=timeout):
                _REACHABLE[url] = True
        except OSError:
            _REACHABLE[url] = False
    return _REACHABLE[url]


@contextmanager
def offline_if_unreachable() -> Iterator[bool]:
    """Run the block in huggingface_hub's offline mode when the hub cannot be reached.

    Yields True when offline. Restores the previous mode afterwards.
    """
    from huggingface_hub import constants

    offline = not hub_reachable()
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield offline
    finally:
        constants.HF_HUB_OFFLINE = before


def offline_message(what: str) -> str:
    """The one line said when `what` is neither cached nor downloadable."""
    return (
        f"{what} is not in the local Hugging Face cache and {_endpoint()} cannot be reached "
        "(offline); download it where there is a network or pass a local folder"
    )
