"""The state machine's transitions and the ConfigMap encoding (never losing a disable)."""

from __future__ import annotations

import msgspec

from kubeguard.protection import state as sm
from kubeguard.protection.state import ProtectionState

T0 = 1_800_000_000.0


def engaged() -> ProtectionState:
    return sm.engage(ProtectionState(), at=T0, cause="3 of 8", nodes=["a", "b", "c"])


def test_engage_latches_and_records_cause() -> None:
    s = engaged()
    assert s.intercepting and s.engaged_nodes == ["a", "b", "c"] and s.cause == "3 of 8"
    assert s.history[-1].event == "engaged"
    again = sm.engage(s, at=T0 + 5, cause="other", nodes=["x"])
    assert again is s  # latched: a second proposal changes nothing


def test_disabled_switch_refuses_engagement() -> None:
    off = sm.disable(ProtectionState(), at=T0, by="alice", redrive=True)
    assert not off.enabled and off.redrive is None  # nothing to release
    assert sm.engage(off, at=T0, cause="c", nodes=["a"]) is off


def test_disable_releases_and_schedules_redrive() -> None:
    s = sm.disable(engaged(), at=T0 + 60, by="oncall", redrive=True)
    assert not s.enabled and not s.engaged and not s.intercepting
    assert s.toggled_by == "oncall" and s.releases == 1
    assert s.redrive is not None and s.redrive.generation == 1 and s.redrive.phase == "pending"
    assert [h.event for h in s.history] == ["engaged", "disabled"]
    off = sm.disable(engaged(), at=T0, by="x", redrive=False)
    assert off.redrive is not None and off.redrive.phase == "off"


def test_enable_clears_latch_then_detector_can_reengage() -> None:
    s = sm.disable(engaged(), at=T0 + 60, by="oncall", redrive=True)
    s = sm.enable(s, at=T0 + 120, by="oncall")
    assert s.enabled and not s.engaged
    s = sm.engage(s, at=T0 + 120, cause="still 3", nodes=["a", "b", "c"])
    assert s.intercepting
    # re-engagement aborts the re-drive of the previous release
    assert s.redrive is not None and s.redrive.phase == "aborted"


def test_auto_release_keeps_switch_on() -> None:
    s = sm.auto_release(engaged(), at=T0 + 900, detail="all Ready for 10m", redrive=True)
    assert s.enabled and not s.engaged and s.releases == 1
    assert s.history[-1].event == "auto-released"


def test_transitions_do_not_mutate_input() -> None:
    s = engaged()
    before = msgspec.json.encode(s)
    sm.disable(s, at=T0, by="x", redrive=True)
    assert msgspec.json.encode(s) == before


def test_roundtrip() -> None:
    s = sm.disable(engaged(), at=T0, by="oncall", redrive=True)
    assert msgspec.json.decode(msgspec.json.encode(s), type=ProtectionState) == s
