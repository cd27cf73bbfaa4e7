"""Keep client data out of every log, BentoML's own error logging included.

BentoML logs a failed request at ERROR with the exception (``Exception on /v1/assess [POST]``
and a traceback); a pydantic `ValidationError`'s text carries the offending input, and other
exceptions may name a client. `RedactExceptionDetails` keeps the exception type and the code
frames (file, line, function: code, not data) and drops the exception's message and arguments.
The service installs it at start-up (never at import) on every logger of the web stack and on
every handler present then.
"""

from __future__ import annotations

import logging
import traceback

_PREFIXES = ("bentoml", "_bentoml_impl", "_bentoml_sdk", "uvicorn", "starlette", "fastapi",
             "anyio", "serving", "models", "features", "mlflow")


class RedactExceptionDetails(logging.Filter):
    """Replace a record's exception text with its type and code frames."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info
        if exc and exc[0] is not None:
            frames = "".join(traceback.format_tb(exc[2])) if exc[2] is not None else ""
            try:
                head = record.getMessage()
            except (TypeError, ValueError):
                head = str(record.msg)
            record.msg = (f"{head} [{exc[0].__name__}: exception message redacted: it may "
                          f"carry client data]\n{frames}".rstrip())
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


FILTER = RedactExceptionDetails()


def install() -> None:
    """Attach the filter to the web stack's loggers and to every existing handler."""
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [
        lg for name, lg in list(manager.loggerDict.items())
        if isinstance(lg, logging.Logger) and name.startswith(_PREFIXES)]
    for lg in loggers:
        if FILTER not in lg.filters:
            lg.addFilter(FILTER)
        for h in lg.handlers:
            if FILTER not in h.filters:
                h.addFilter(FILTER)
