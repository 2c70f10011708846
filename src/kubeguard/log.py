"""Logging: one JSON object per line by default, `--log-format=text` for humans.

Structured fields are passed with `extra={...}` and appear as top-level JSON keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from typing import Any, TextIO

import msgspec

# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _to_str(value: Any) -> str:
    return str(value)


_json = msgspec.json.Encoder(enc_hook=_to_str)


class JSONFormatter(logging.Formatter):
    """One JSON object per line. msgspec encodes it and the second-resolution part of the
    timestamp is cached: the admission path logs every decision, so this costs a few µs."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out = self._head(record.created, record.levelname, record.name, record.getMessage())
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encode(out)

    def fields_line(self, level: int, logger: str, msg: str, fields: dict[str, Any]) -> str:
        """The line `format` gives for a record of `msg` with `fields` as `extra`."""
        out = self._head(time.time(), logging.getLevelName(level), logger, msg)
        out.update(fields)
        return _encode(out)

    def _head(self, created: float, level: str, logger: str, msg: str) -> dict[str, Any]:
        ts = self._timestamp(created)
        return {"ts": ts, "level": level.lower(), "logger": logger, "msg": msg}


def _encode(out: dict[str, Any]) -> str:
    try:
        return _json.encode(out).decode()
    except (TypeError, ValueError, OverflowError):
        return json.dumps(out, default=str, ensure_ascii=False)


def log_fields(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """Log `msg` with `fields` as top-level keys, like `logger.log(level, msg, extra=fields)`.

    For lines on the admission path (one per denial). When the only handler the record would
    reach is kubeguard's JSON handler, with no filters on the way, the line is encoded and
    written directly: no LogRecord, no attribute walk, 3-5 µs instead of 15-20. Otherwise (text
    format, extra handlers such as pytest's caplog, filters) it goes through `logging`.
    """
    if not logger.isEnabledFor(level):
        return
    handler = _direct_handler(logger, level)
    if handler is None:
        logger.handle(logger.makeRecord(logger.name, level, "", 0, msg, (), None, extra=fields))
        return
    formatter = handler.formatter
    assert isinstance(formatter, JSONFormatter)
    line = formatter.fields_line(level, logger.name, msg, fields)
    with handler.lock if handler.lock is not None else contextlib.nullcontext():
        try:
            handler.stream.write(line + handler.terminator)
            handler.flush()
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": msg}))


def _direct_handler(logger: logging.Logger, level: int) -> logging.StreamHandler[Any] | None:
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or current.disabled:
            return None
        if current.handlers:
            if current.parent is not None or len(current.handlers) != 1:
                return None  # a handler below the root, or several: the general path
            handler = current.handlers[0]
            if (
                isinstance(handler, logging.StreamHandler)
                and handler.get_name() == "kubeguard"
                and isinstance(handler.formatter, JSONFormatter)
                and not handler.filters
                and handler.level <= level
            ):
                return handler
            return None
        if not current.propagate:
            return None
        current = current.parent
    return None


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items() if v not in ("", None))
        line = f"{ts} {record.levelname[0]} {record.name}: {record.getMessage()}"
        if extras:
            line += "  " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure the root logger once (idempotent: replaces kubeguard's previous handler)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.set_name("kubeguard")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "kubeguard"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # No log line shows the process, thread or multiprocessing names: skip collecting them
    # (a getpid() syscall per record on the admission path).
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    # uvicorn's own access log would duplicate our decision lines.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
