"""Is the Hugging Face hub (or another host) reachable? Asked once, quickly, before slow retries.

The hub is asked through huggingface_hub's own HTTP session, so ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``,
proxies (``HTTPS_PROXY``...) and its headers apply exactly as they will for the download that follows.
Other URLs go through urllib, which honours the same proxy variables.
"""
from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from functools import lru_cache

log = logging.getLogger(__name__)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, also when it was set after huggingface_hub was imported."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES


@lru_cache(maxsize=None)
def _endpoint_answers(endpoint: str, timeout: float) -> bool:
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=timeout)
    except Exception as exc:  # the session's transport errors (DNS, refused, proxy, timeout, offline mode)
        log.info("Hugging Face hub %s unreachable: %s: %s", endpoint, type(exc).__name__, exc)
        return False
    return True


def hub_reachable(timeout: float = 5.0) -> bool:
    if hub_offline():
        return False
    from huggingface_hub import constants

    return _endpoint_answers(os.environ.get("HF_ENDPOINT", constants.ENDPOINT), timeout)


@lru_cache(maxsize=None)
def url_reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):  # noqa: S310
            return True
    except urllib.error.HTTPError:  # the server answered (e.g. 405 to HEAD): reachable
        return True
    except OSError as exc:  # URLError, timeouts, refused connections
        log.info("%s unreachable: %s", url, exc)
        return False
