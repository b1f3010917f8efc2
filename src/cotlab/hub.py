"""Whether the Hugging Face hub can be reached; when it cannot, hub loads are switched to offline mode, so they fail
at once with their own clear error instead of after a minute of retries (huggingface_hub's default on no network).
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def endpoint() -> tuple[str, int]:
    """(host, port) of the hub: $HF_ENDPOINT (a mirror) or huggingface.co."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def reachable(timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection(endpoint(), timeout=timeout_s).close()
        return True
    except OSError:  # no DNS, no route, refused or timed out
        return False


def offline_unless_reachable(timeout_s: float = 3.0) -> bool:
    """Set the HF offline variables when the hub cannot be reached; True when offline (so set, or already set by
    the user). Also updates huggingface_hub's constant when the library is already imported (it reads the variable
    once, at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    if reachable(timeout_s):
        return False
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    return True
