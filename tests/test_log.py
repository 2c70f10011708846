"""Structured logging: one JSON object per line, extras as top-level keys."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from pathlib import Path

from kubeguard.log import JSONFormatter, TextFormatter, _direct_handler, log_fields, setup_logging


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


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_log_fields_direct_line_equals_the_logging_line() -> None:
    """`log_fields` writes the line itself when kubeguard's JSON handler is the only one; it is
    the line `logging` would have written (but the timestamp), and levels still apply."""
    stream = io.StringIO()
    setup_logging("json", "info", stream=stream)
    root = logging.getLogger()
    others = [h for h in root.handlers if h.get_name() != "kubeguard"]  # pytest's capture
    for handler in others:
        root.removeHandler(handler)
    logger = logging.getLogger("kubeguard.test.fields")
    fields = {"uid": "u-3", "dry_run": True, "path": Path("/x"), "object_name": "web-0"}
    try:
        log_fields(logger, logging.INFO, "decided", fields)
        log_fields(logger, logging.DEBUG, "not shown", fields)
        assert _direct_handler(logger, logging.INFO) is not None
        # A filter anywhere on the way sends records through logging, which applies it.
        blocked = logging.Filter("nothing")
        logger.addFilter(blocked)
        try:
            assert _direct_handler(logger, logging.INFO) is None
            log_fields(logger, logging.INFO, "filtered", fields)
        finally:
            logger.removeFilter(blocked)
        logger.info("decided", extra=fields)
    finally:
        for handler in others:
            root.addHandler(handler)
    direct, through_logging = _lines(stream)
    assert direct.pop("ts") and through_logging.pop("ts")
    assert (
        direct
        == through_logging
        == {
            "level": "info",
            "logger": "kubeguard.test.fields",
            "msg": "decided",
            "uid": "u-3",
            "dry_run": True,
            "path": "/x",
            "object_name": "web-0",
        }
    )


def test_log_fields_reaches_other_handlers_through_logging() -> None:
    stream, other = io.StringIO(), io.StringIO()
    setup_logging("json", "info", stream=stream)
    extra = logging.StreamHandler(other)
    logging.getLogger().addHandler(extra)
    try:
        logger = logging.getLogger("kubeguard.test.fields2")
        assert _direct_handler(logger, logging.INFO) is None
        log_fields(logger, logging.INFO, "both", {"uid": "u-4"})
    finally:
        logging.getLogger().removeHandler(extra)
    assert _lines(stream)[0]["uid"] == "u-4"
    assert "both" in other.getvalue()
