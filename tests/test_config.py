"""Settings: flag > environment > default, parsers, and error messages naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeguard.config import (
    OPTIONS,
    ConfigError,
    Settings,
    Threshold,
    load_settings,
    parse_duration,
    parse_threshold,
)


def test_defaults_match_seed_000() -> None:
    s = load_settings({}, {})
    assert s.port == 8443
    assert s.cert_dir == Path("/tmp/k8s-webhook-server/serving-certs")
    assert s.bind_address == "0.0.0.0"
    assert s.local is False
    assert s.notready_threshold == Threshold(count=3)
    assert s.notready_window == 300.0
    assert 0 < s.cert_reload_interval <= 10  # the issue: poll at least every 10 s


def test_flag_beats_environment_beats_default() -> None:
    env = {"WEBHOOK_PORT": "9443", "CERT_DIR": "/env/certs", "NODE_NOTREADY_WINDOW": "2m"}
    s = load_settings({"port": "10443"}, env)
    assert s.port == 10443  # flag
    assert s.cert_dir == Path("/env/certs")  # environment
    assert s.notready_window == 120.0
    assert s.bind_address == "0.0.0.0"  # default


def test_empty_environment_variable_means_unset() -> None:
    assert load_settings({}, {"WEBHOOK_PORT": "", "CERT_DIR": "  "}).port == 8443


def test_boolean_flags_from_cli_and_environment() -> None:
    assert load_settings({"local": True}, {"KUBEGUARD_LOCAL": "false"}).local is True
    assert load_settings({}, {"KUBEGUARD_LOCAL": "yes"}).local is True
    assert load_settings({"redrive": False}, {}).redrive is False
    with pytest.raises(ConfigError, match=r"KUBEGUARD_LOCAL.*expected true or false"):
        load_settings({}, {"KUBEGUARD_LOCAL": "maybe"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("300s", 300.0),
        ("300", 300.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        (" 10s ", 10.0),
        ("0.25", 0.25),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert load_settings({}, {"NODE_NOTREADY_WINDOW": text}).notready_window == seconds


@pytest.mark.parametrize("text", ["5x", "m5", "-5s", "five minutes", "5 m", "inf", "nan", "0"])
def test_bad_window_names_the_variable_and_the_accepted_form(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}, {"NODE_NOTREADY_WINDOW": text})
    message = str(info.value)
    assert (
        f"invalid value {text!r} for NODE_NOTREADY_WINDOW (also settable as --notready-window)"
        in (message)
    )
    assert "5m" in message and "300s" in message and "300" in message


def test_bad_flag_names_the_flag_and_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"notready_window": "soon"}, {})
    assert "for --notready-window (also settable as NODE_NOTREADY_WINDOW)" in str(info.value)


@pytest.mark.parametrize(
    ("text", "threshold", "resolved_of_40"),
    [
        ("3", Threshold(count=3), 3),
        ("10%", Threshold(percent=10.0), 4),
        ("2.5%", Threshold(percent=2.5), 1),
        ("100%", Threshold(percent=100.0), 40),
        ("1", Threshold(count=1), 1),
    ],
)
def test_thresholds(text: str, threshold: Threshold, resolved_of_40: int) -> None:
    parsed = parse_threshold(text)
    assert parsed == threshold
    assert parsed.resolve(40) == resolved_of_40
    assert load_settings({}, {"NODE_NOTREADY_THRESHOLD": text}).notready_threshold == threshold


def test_percentage_threshold_never_resolves_to_zero() -> None:
    assert Threshold(percent=10.0).resolve(3) == 1
    assert Threshold(percent=10.0).resolve(0) == 1
    assert Threshold(percent=10.0).resolve(11) == 2  # ceil(1.1)
    assert Threshold(percent=10.0).resolve(10) == 1  # exactly 1.0, no float drift to 2
    assert str(Threshold(percent=10.0)) == "10%" and str(Threshold(count=3)) == "3"


@pytest.mark.parametrize("text", ["0", "-1", "three", "0%", "101%", "%", "1.5", "abc%"])
def test_bad_threshold_names_the_variable_and_forms(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}, {"NODE_NOTREADY_THRESHOLD": text})
    message = str(info.value)
    assert "NODE_NOTREADY_THRESHOLD" in message and "--notready-threshold" in message
    assert ("3" in message or "10%" in message) and "%" in message


@pytest.mark.parametrize("text", ["0", "65536", "-1", "http", "80.5"])
def test_bad_port(text: str) -> None:
    with pytest.raises(
        ConfigError, match=r"WEBHOOK_PORT .*expected a TCP port number from 1 to 65535"
    ):
        load_settings({}, {"WEBHOOK_PORT": text})


def test_choices_and_codes() -> None:
    assert load_settings({}, {"LOG_FORMAT": "TEXT"}).log_format == "text"
    with pytest.raises(ConfigError, match=r"LOG_FORMAT.*expected one of json, text"):
        load_settings({}, {"LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match=r"EVICTION_DENY_CODE.*from 400 to 599"):
        load_settings({}, {"EVICTION_DENY_CODE": "200"})
    assert load_settings({}, {"BREAK_GLASS_USERS": "a, b,,c"}).break_glass_users == ("a", "b", "c")


def test_feature_gates_are_passed_through_verbatim() -> None:
    # Parsed and validated against the registry by the server (unknown gates exit 2 there).
    assert load_settings({}, {"FEATURE_GATES": "A=true,B=false"}).feature_gates == "A=true,B=false"


def test_cross_field_validation() -> None:
    with pytest.raises(ConfigError, match=r"--callback-auth=none .* refused unless"):
        load_settings({}, {"CALLBACK_AUTH": "none"})
    assert (
        load_settings({"callback_auth": "none", "bind_address": "127.0.0.1"}, {}).callback_auth
        == "none"
    )
    with pytest.raises(ConfigError, match="--local serves plain HTTP"):
        load_settings({"local": True, "self_signed": True}, {})


def test_every_option_is_a_settings_field_with_unique_flag_and_env() -> None:
    fields = set(Settings.__dataclass_fields__)
    assert {o.field for o in OPTIONS} <= fields
    assert len({o.flag for o in OPTIONS}) == len(OPTIONS)
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)


def test_summary_masks_secrets() -> None:
    s = load_settings(
        {},
        {
            "DINGTALK_SECRET": "s3cret",
            "DINGTALK_WEBHOOK_URL": "https://oapi/robot/send?access_token=t0k",
        },
    )
    summary = s.summary()
    assert summary["dingtalk_secret"] == "***"
    assert summary["dingtalk_url"].startswith("https://oapi")
    assert summary["dingtalk_url"].endswith("***")
    assert "s3cret" not in repr(summary) and "t0k" not in repr(summary)
