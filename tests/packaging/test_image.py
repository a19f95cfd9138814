"""The container image recipe (no Docker engine here: the Dockerfile is checked as text) and the
helm/kubectl extraction tool."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from pathlib import Path

from tests.packaging.conftest import ROOT, k8s_binaries, run

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_two_stages_on_python_311_slim() -> None:
    steps = instructions()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    froms = [a for k, a in steps if k == "FROM"]
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]


def test_final_stage_runs_the_operator_as_non_root() -> None:
    steps = instructions()
    final = steps[[i for i, (k, _) in enumerate(steps) if k == "FROM"][-1] :]
    assert ("USER", "65532:65532") in final
    assert ("ENTRYPOINT", '["gadget-operator", "run"]') in final
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    exposed = {port for k, a in final if k == "EXPOSE" for port in a.split()}
    assert exposed == {"8080", "9090"}
    assert "HEALTHCHECK" not in {k for k, _ in steps}
    env = " ".join(a for k, a in final if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "/opt/venv/bin" in env


def test_builder_installs_wheels_only() -> None:
    runs = " ".join(a for k, a in instructions() if k == "RUN")
    assert "pip wheel --no-deps --wheel-dir /wheels ." in runs
    assert "--no-index --find-links /wheels gadget-operator" in runs
    # The entry point the image uses is the one pyproject.toml installs.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gadget-operator"] == "gadget_operator.cli:main"


def test_build_context_holds_what_the_build_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*"  # an allow-list
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        src.rstrip("/")
        for k, a in instructions()
        if k == "COPY" and not a.startswith("--from")
        for src in shlex.split(a)[:-1]
    }
    assert copied <= allowed, copied - allowed
    assert {"pyproject.toml", "README.md", "operator"} <= allowed  # README.md: pyproject's readme


def test_k8s_binaries_is_idempotent(binaries: dict[str, Path]) -> None:
    before = {name: path.stat() for name, path in binaries.items()}
    again = k8s_binaries.ensure.__wrapped__(k8s_binaries.CACHE_DIR)  # bypass the in-process cache
    assert again == binaries
    for name, path in again.items():
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns), name
        assert after.st_mode & 0o111


def test_k8s_binaries_cli_prints_the_paths(binaries: dict[str, Path]) -> None:
    output = run([sys.executable, ROOT / "tools" / "k8s_binaries.py"]).stdout
    assert dict(line.split("\t") for line in output.splitlines()) == {n: str(p) for n, p in binaries.items()}
