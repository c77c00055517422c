"""Secrets never reach the disk or the logs: credentials in URLs and options named like key/token/secret
are replaced by ``***`` in manifests, results and messages."""
from __future__ import annotations

import re
from typing import Any

_SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials",
                 "auth", "authorization", "bearer"}
REDACTED = "***"


def is_secret_name(name: str) -> bool:
    """Names like api_key, hf_token, client-secret; not names that only mention them
    (max_new_tokens, api_key_env: the variable's name, not its value)."""
    parts = [p for p in re.split(r"[_\-.\s]+", name.lower()) if p]
    if not parts or parts[-1] == "env":
        return False
    return parts[-1] in _SECRET_WORDS or any(p in ("secret", "password", "passwd") for p in parts)


# user-info ends at the authority's LAST "@" (as urllib.parse splits it): a password may hold "@" and ":"
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/?#\s\"'<>]*@")
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z][\w\-.]*)=(?P<value>[^\s&,;'\"]+)")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s'\"\\]+")
_API_KEY_SHAPE = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")  # OpenAI-style keys, wherever they appear

# Secret values in use (an API key read from its environment variable): hidden wherever they appear.
_secret_values: set[str] = set()


def register_secret(value: str | None) -> None:
    """Hide ``value`` from every text redacted from now on (too short a value would hide ordinary text)."""
    if value and len(value) >= 6:
        _secret_values.add(value)


def redact_text(text: str) -> str:
    """``scheme://user:pass@host`` -> ``scheme://***@host``; ``api_key=...`` and ``Bearer ...`` values, keys
    shaped like ``sk-...`` and the registered secret values hidden."""
    for secret in sorted(_secret_values, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _API_KEY_SHAPE.sub(REDACTED, text)
    return _ASSIGNMENT.sub(lambda m: f"{m.group('name')}={REDACTED}" if is_secret_name(m.group("name"))
                           else m.group(0), text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, strings) with secrets replaced by ``***``."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_name(str(k)) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        redacted = [redact(v) for v in value]
        # argv: the value after a secret-named flag (``--api-key VALUE``)
        for i in range(1, len(redacted)):
            prev = value[i - 1]
            if isinstance(prev, str) and prev.startswith("--") and "=" not in prev and is_secret_name(prev[2:]):
                redacted[i] = REDACTED
        return redacted
    if isinstance(value, str):
        return redact_text(value)
    return value


class RedactingFilter:
    """A logging filter that redacts each record's final message (credentials in URLs and options)."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction() -> None:
    """Redact every message the root logger's handlers print (our logs and libraries', e.g. httpx URLs)."""
    import logging

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
