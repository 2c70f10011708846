"""`kubeguard demo` end to end: the simulated cluster, a real `kubeguard serve` process, the
real CLI. The demo checks every step itself and exits non-zero when one did not happen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubeguard", "demo", "--keep", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_protection_demo_passes_every_check(tmp_path: Path) -> None:
    done = run_demo(tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for expected in (
        "ok   the taint-eviction controller evicted all pods of w1",
        "ok   protection did not engage for one node",
        "ok   protection engaged",
        "ok   all 9 pods on w2, w3, w4 are still there",
        "ok   eviction of a pod on a NotReady node denied with 429",
        "ok   a pod on a healthy node is still evicted",
        "ok   kubeguard disable succeeded",
        "ok   re-drive evicted the 9 pods stranded on the still-NotReady nodes",
        "demo passed: 9 checks",
    ):
        assert expected in out
    assert "FAIL" not in out
    # kubeguard ran as its own process and logged its decisions as JSON lines.
    lines = [
        json.loads(line)
        for line in (tmp_path / "kubeguard.log").read_text().splitlines()
        if line.startswith("{")
    ]
    decisions = [r for r in lines if r["msg"] == "admission decision"]
    assert any(r["decision"] == "denied" for r in decisions)
    assert all(r["uid"] and r["user"] for r in decisions)


def test_sts_demo_passes_every_check(tmp_path: Path) -> None:
    done = run_demo(tmp_path, "--scenario", "sts")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "web-1: nodeSelector {'name': 'node2'}" in out
    assert "demo passed: 3 checks" in out


def test_unknown_scenario_is_a_usage_error(tmp_path: Path) -> None:
    done = run_demo(tmp_path, "--scenario", "nope")
    assert done.returncode == 2
    assert "Invalid value for '--scenario'" in done.stderr
