"""Logging: structlog, one JSON object per line on stdout, secrets scrubbed.

``configure_logging`` is called once per process. JSON lines are rendered with orjson
straight to bytes (structlog's ``BytesLoggerFactory``); ``format = "console"`` renders
for humans. aiohttp's own stdlib loggers go through the same processors, and its access
log is off: the proxy writes its own line per call.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any, Final

import orjson
import structlog
from structlog.typing import EventDict, Processor

from proxy import events
from proxy.redact import Redactor

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


_JSON_OPTIONS: Final = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def _dumps(obj: Any, default: Any = None) -> bytes:
    """One JSON line; one JSON cannot hold (a huge int, deep nesting) is written plain."""
    try:
        return orjson.dumps(obj, default=str, option=_JSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        return orjson.dumps(_plain_line(obj), default=str, option=_JSON_OPTIONS)


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    redactor: Redactor | None = None,
    stream: IO[bytes] | None = None,
    *,
    cache: bool = True,
) -> None:
    """Set up structlog and the stdlib root logger for this process."""
    redact = redactor or Redactor()
    shared: list[Processor] = [
        _add_request_id,
        structlog.processors.add_log_level,
        _Clock(),
        _Tracebacks(as_text=fmt == "console"),
        redact,
    ]
    out = stream if stream is not None else sys.stdout.buffer
    if fmt == "console":
        text_out: Any = sys.stdout if stream is None else _TextStream(out)
        renderer: Processor = _Console()
        factory: Any = structlog.PrintLoggerFactory(file=text_out)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        factory = _LineBytesLoggerFactory(out)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=_LiveLevel,
        logger_factory=factory,
        cache_logger_on_first_use=cache,  # tests reconfigure between cases
    )
    _route_stdlib(level, shared, fmt, _TextStream(out))
    set_level(level)


class _LiveLevel(structlog.make_filtering_bound_logger(logging.DEBUG)):  # type: ignore[misc]
    """The one logger class: structlog's filtering logger for a level, whose level can
    change while running (a reload) for every logger already made, cached ones too."""


def set_level(level: str) -> None:
    """Log at ``level`` from now on: every logger's methods become those structlog
    makes for it (a method below the level does nothing), at no cost per line."""
    made = structlog.make_filtering_bound_logger(LEVELS[level])
    for name, method in vars(made).items():
        if callable(method):
            setattr(_LiveLevel, name, method)
    logging.getLogger().setLevel(max(LEVELS[level], logging.INFO))


#: The id of the call being handled, for every line logged while handling it (a task
#: started during a call, such as a token fetch, inherits it). One variable read per
#: line, where structlog.contextvars walks every context variable there is.
CALL_ID: Final[contextvars.ContextVar[str]] = contextvars.ContextVar("request_id")


def _add_request_id(_: Any, __: str, event_dict: EventDict) -> EventDict:
    request_id = CALL_ID.get(None)
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


class _Tracebacks:
    """Tracebacks as data (as plain text for the console, whose renderer wants a
    string), but never with local variables: locals can hold secrets. Either way the
    redactor sees them before they are written. Lines without ``exc_info`` (nearly
    all) skip structlog's renderer altogether."""

    def __init__(self, *, as_text: bool = False) -> None:
        self._render = (
            structlog.processors.ExceptionRenderer()  # plain traceback text, no locals
            if as_text
            else structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )

    def __call__(self, logger: Any, method: str, event_dict: EventDict) -> EventDict:
        if "exc_info" in event_dict:
            return self._render(logger, method, event_dict)
        return event_dict


class _Console:
    """The console renderer, which never fails: a line it cannot render (a list where
    it wants text, as ``exception``) is rendered again with every value made plain."""

    def __init__(self) -> None:
        self._render = structlog.dev.ConsoleRenderer(colors=False)

    def __call__(self, logger: Any, method: str, event_dict: EventDict) -> str:
        try:
            return self._render(logger, method, dict(event_dict))  # it pops what it shows
        except Exception:  # whatever it was, the line is still written
            return self._render(logger, method, _plain_line(event_dict))


def _plain_line(event_dict: Any) -> dict[str, Any]:
    return {str(k): _plain(v, top=True) for k, v in event_dict.items()}


def _plain(value: Any, *, top: bool = False) -> Any:
    """``value`` as JSON's and the console's plain types, other objects as their repr;
    at the top, lists and dicts too (the console wants text for ``exception``)."""
    if value is None or isinstance(value, bool | float | str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if top:
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return repr(value)


class _Clock:
    """ISO 8601 UTC timestamps exactly as ``TimeStamper(fmt="iso", utc=True)`` writes
    them (``2026-01-31T12:00:00.123456Z``), with the date and time of day formatted once
    per second instead of through a ``datetime`` per line.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: Any, __: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        micro = int((now - second) * 1_000_000)
        # isoformat() leaves the fraction out when it is zero; so do we.
        event_dict["timestamp"] = f"{self._prefix}.{micro:06d}Z" if micro else f"{self._prefix}Z"
        return event_dict


class _LineBytesLogger:
    """Writes pre-rendered JSON lines (newline included) to a binary stream."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def msg(self, message: bytes) -> None:
        # One write per line, so that workers sharing a pipe never tear each other's
        # lines (a pipe write below PIPE_BUF is atomic). Batching lines per loop
        # iteration would save ~2 us a call, and nothing under PYTHONUNBUFFERED.
        self._out.write(message)
        self._out.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _LineBytesLoggerFactory:
    def __init__(self, out: IO[bytes]) -> None:
        self._logger = _LineBytesLogger(out)

    def __call__(self, *args: Any) -> _LineBytesLogger:
        return self._logger


class _TextStream:
    """A text view of a binary stream, for the console renderer."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def write(self, text: str) -> int:
        return self._out.write(text.encode("utf-8", "replace"))

    def flush(self) -> None:
        self._out.flush()


def _route_stdlib(level: str, shared: list[Processor], fmt: str, out: _TextStream) -> None:
    """aiohttp and asyncio log through stdlib; render them like our own lines."""
    renderer: Processor = _Console() if fmt == "console" else _render_json_text
    formatter = _SafeFormatter(
        foreign_pre_chain=[*shared[:-1], _name_event],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            shared[-1],
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(LEVELS[level], logging.INFO))
    logging.getLogger("aiohttp.access").disabled = True


def _render_json_text(_: Any, __: str, event_dict: Any) -> str:
    return _dumps(event_dict)[:-1].decode()  # the handler adds the newline


class _SafeFormatter(structlog.stdlib.ProcessorFormatter):
    """A record whose message cannot be formatted (``"%d" % "text"``, from any library)
    is written with its message and arguments as text, not as ``--- Logging error ---``."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            return super().format(record)
        except Exception:
            plain = logging.makeLogRecord(record.__dict__)
            plain.msg, plain.args = f"{record.msg!r} % {record.args!r}", None
            return super().format(plain)


def _name_event(_: Any, __: str, event_dict: Any) -> Any:
    record = event_dict.get("_record")
    if record is not None:
        event_dict["logger"] = record.name
        event_dict.setdefault("message", event_dict.get("event"))
        event_dict["event"] = events.AIOHTTP if record.name.startswith("aiohttp") else "stdlib"
    return event_dict
