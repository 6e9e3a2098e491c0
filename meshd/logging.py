"""structlog setup: console lines on a terminal, JSON lines otherwise (journald, files).

``make_logger`` builds an independent logger (several nodes per process each bind their
own ``node=``); ``configure_process_logging`` is called once by ``meshd`` so that modules
using ``structlog.get_logger()`` print in the same format.
"""

from __future__ import annotations

import logging as std_logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger, Processor

_LEVELS = {
    "debug": std_logging.DEBUG,
    "info": std_logging.INFO,
    "warning": std_logging.WARNING,
    "error": std_logging.ERROR,
}


def _processors(fmt: str, stream: TextIO) -> list[Processor]:
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    common: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        return [
            *common,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("msg"),
            structlog.processors.JSONRenderer(),
        ]
    return [*common, structlog.dev.ConsoleRenderer(colors=stream.isatty())]


def make_logger(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None, **bind: Any
) -> FilteringBoundLogger:
    """A logger writing to ``stream`` (stderr by default) at ``level`` and above."""
    out = sys.stderr if stream is None else stream
    logger: FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(file=out),
        processors=_processors(fmt, out),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=False,
    )
    return logger.bind(**bind) if bind else logger


def configure_process_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Process-wide default for ``structlog.get_logger()`` (the daemon entry point only)."""
    out = sys.stderr if stream is None else stream
    structlog.configure(
        processors=_processors(fmt, out),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    # grpc and asyncio log through the stdlib: same level, same stream.
    std_logging.basicConfig(level=_LEVELS[level], stream=out, format="%(name)s: %(message)s")
