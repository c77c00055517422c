"""Is the Hugging Face hub (or another host) reachable? Checked once, quickly, before slow retries."""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse


@lru_cache(maxsize=None)
def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return host_reachable(urlparse(endpoint).hostname or "huggingface.co")


def url_reachable(url: str) -> bool:
    parsed = urlparse(url)
    return host_reachable(parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80))
