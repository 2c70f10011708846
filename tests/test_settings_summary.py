"""The start-up log line never carries secrets."""

from __future__ import annotations

import json

from kubeguard.config import Settings


def test_summary_masks_secrets_and_tokens_in_urls() -> None:
    settings = Settings(
        dingtalk_url="https://oapi.dingtalk.com/robot/send?access_token=tok-123",
        dingtalk_secret="SEC-456",
        notify_webhook_url="https://user:pw-789@hooks.example.com/services/tok-abc",
    )
    text = json.dumps(settings.summary())
    for secret in ("tok-123", "SEC-456", "pw-789", "tok-abc", "user:"):
        assert secret not in text
    summary = settings.summary()
    assert summary["dingtalk_url"] == "https://oapi.dingtalk.com/***"
    assert summary["notify_webhook_url"] == "https://hooks.example.com/***"
    assert summary["dingtalk_secret"] == "***"


def test_summary_leaves_unset_values_visible() -> None:
    summary = Settings().summary()
    assert summary["dingtalk_url"] == ""
    assert summary["dingtalk_secret"] == ""
    assert summary["notready_threshold"] == "3"
