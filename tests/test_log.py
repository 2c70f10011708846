"""Structured logging: one JSON object per line, extras as top-level keys."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from pathlib import Path

from kubeguard.log import JSONFormatter, TextFormatter, setup_logging


def _record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("kubeguard.test")
    return logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "hello %s", ("x",), None, extra=extra
    )


def test_json_line_has_timestamp_level_message_and_extras() -> None:
    line = JSONFormatter().format(_record(uid="u-1", dry_run=False, path=Path("/tmp/a")))
    data = json.loads(line)
    assert data["msg"] == "hello x"
    assert data["level"] == "info"
    assert data["logger"] == "kubeguard.test"
    assert data["uid"] == "u-1"
    assert data["dry_run"] is False
    assert data["path"] == "/tmp/a"  # not JSON-native: rendered with str()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["ts"])


def test_json_line_carries_the_exception() -> None:
    logger = logging.getLogger("kubeguard.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    data = json.loads(JSONFormatter().format(record))
    assert "ValueError: boom" in data["exc"]


def test_text_format_is_one_readable_line() -> None:
    line = TextFormatter().format(_record(uid="u-2", reason=""))
    assert "kubeguard.test: hello x" in line
    assert "uid=u-2" in line
    assert "reason=" not in line  # empty values are left out


def test_setup_logging_is_idempotent() -> None:
    stream = io.StringIO()
    setup_logging("json", "info", stream=stream)
    setup_logging("json", "info", stream=stream)
    logging.getLogger("kubeguard.test").info("once")
    lines = [line for line in stream.getvalue().splitlines() if '"once"' in line]
    assert len(lines) == 1
