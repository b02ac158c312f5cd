"""structlog set-up: JSON lines (or console on a TTY) on stderr, stdlib loggers bridged, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any

import structlog

SENSITIVE_KEYS = re.compile(r"(?i)(secret|password|token|authorization|signature|api_key)")
_secrets: tuple[str, ...] = ()
_known: set[str] = set()
_lock = threading.Lock()


def register_secrets(values: Iterable[str]) -> None:
    """Values that must never be printed (resolved config secrets, tokens obtained at run time)."""
    global _secrets
    fresh = {v for v in values if isinstance(v, str) and len(v) >= 4} - _known
    if not fresh:
        return  # the common case (a token sent again): no sort, no lock
    with _lock:
        _known.update(fresh)
        # Longest first, so that a secret containing another is masked whole.
        _secrets = tuple(sorted(_known, key=len, reverse=True))


def redact(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: "***" if _sensitive_key(k, v) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _sensitive_key(key: Any, value: Any) -> bool:
    return isinstance(key, str) and isinstance(value, str) and bool(SENSITIVE_KEYS.search(key))


def _redact_processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return redact(event_dict)


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _redact_processor,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if console else [structlog.processors.dict_tracebacks]),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # urllib3 logs full URLs at debug level; keep it at info so query strings never reach the log.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
    # APScheduler logs every job start and end at info; syncd's own lines say more, once.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING if root.level > logging.DEBUG else logging.DEBUG,
                                                  root.level))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
