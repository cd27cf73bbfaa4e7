"""Structured logging with a redaction guard: client data never reaches a log.

Called by entry points (the CLI, the service) only; importing this module configures nothing.
"""

from __future__ import annotations

import logging
import sys

import structlog

# Keys that could carry client data. Any event carrying one has its value replaced.
REDACTED_KEYS = frozenset(
    {"client_id", "client", "clients", "score", "scores", "items", "history", "sessions",
     "body", "request", "payload", "free_text", "note", "notes", "date", "dates"}
)


def redact(_logger, _method, event_dict: dict) -> dict:
    for key in list(event_dict):
        if key in REDACTED_KEYS:
            event_dict[key] = "[redacted]"
    return event_dict


class _CurrentStderr:
    """Writes each line to the sys.stderr of the moment (not the one of configuration time:
    a test runner or a CLI runner may swap and close streams between calls)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _logger_factory(*_args) -> _CurrentStderr:
    return _CurrentStderr()


def configure_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            redact,
            structlog.dev.ConsoleRenderer() if sys.stderr.isatty()
            else structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=False,
    )
