"""Logging: one JSON object per line by default, `--log-format=text` for humans.

Structured fields are passed with `extra={...}` and appear as top-level JSON keys.
"""

from __future__ import annotations

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
        out: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            return _json.encode(out).decode()
        except (TypeError, ValueError, OverflowError):
            return json.dumps(out, default=str, ensure_ascii=False)


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
