"""graft's log records on the server's output, in a format ops can parse.

BentoML's server logging configures handlers for its own loggers and leaves the root logger at
WARNING, so graft's INFO records (start-up, models and heads loaded, ready, one line per client
mistake) were dropped under `bentoml serve`. Each server process gives the `graft` logger a handler
of its own: plain lines by default, one JSON object per line with `GRAFT_LOG_FORMAT=json`.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("plain", "json")
_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
_PLAIN = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def configure(log_format: str, level: str) -> None:
    """Send the `graft` logger's records to stderr as `log_format` at `level`; idempotent.

    Records stop propagating to the root logger, whose BentoML handler would print them twice.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(_FIELDS, rename_fields={"asctime": "time", "levelname": "level"}))
    else:
        handler.setFormatter(logging.Formatter(_PLAIN))
    logger = logging.getLogger("graft")
    logger.handlers = [handler]
    logger.setLevel(level)
    logger.propagate = False
