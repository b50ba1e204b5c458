"""requirements.lock matches pyproject.toml: a dependency changed without `make lock` fails."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from devtools import lockcheck
from tests.conftest import REPO


def test_the_lock_matches_pyproject() -> None:
    assert lockcheck.problems() == []
    pinned = lockcheck.pins()
    assert {"slack-bolt", "celery", "transformers", "peft", "pytest", "trl"} <= set(pinned)
    assert "torch" not in pinned  # each image pins its own build
    assert not any(n.startswith(("nvidia-", "cuda-", "triton")) for n in pinned)


def test_a_dependency_changed_without_make_lock_fails(tmp_path: Path) -> None:
    pyproject, lock = tmp_path / "pyproject.toml", tmp_path / "requirements.lock"
    shutil.copy(REPO / "pyproject.toml", pyproject)
    shutil.copy(REPO / "requirements.lock", lock)
    assert lockcheck.problems(pyproject, lock) == []
    # Tool settings may change freely; a dependency may not.
    pyproject.write_text(pyproject.read_text() + "\n[tool.example]\nx = 1\n")
    assert lockcheck.problems(pyproject, lock) == []
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6.0",',
                                                      '"pyyaml>=6.0",\n  "left-pad>=1.0",'))
    found = lockcheck.problems(pyproject, lock)
    assert any("run `make lock`" in p for p in found)
    assert any(p.startswith("left-pad is required") for p in found)


def test_a_pin_outside_pyproject_range_fails(tmp_path: Path) -> None:
    pyproject, lock = tmp_path / "pyproject.toml", tmp_path / "requirements.lock"
    shutil.copy(REPO / "pyproject.toml", pyproject)
    text = (REPO / "requirements.lock").read_text()
    version = lockcheck.pins()["sqlalchemy"]
    lock.write_text(text.replace(f"sqlalchemy=={version}", "sqlalchemy==1.4.0"))
    assert any("sqlalchemy==1.4.0" in p and ">=2.0.36" in p
               for p in lockcheck.problems(pyproject, lock))


def test_the_install_step_checks_the_stamp() -> None:
    out = subprocess.run([sys.executable, "-m", "devtools.lockcheck", "--digest"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
    assert "matches" in out.stdout
