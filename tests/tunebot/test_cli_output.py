"""A one-shot CLI command prints its answer only; library logs go to var/cli.log (or -v)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEBOT_", "SLACK_"))}
    env.update(TUNEBOT_VAR_DIR=str(tmp_path / "var"), TUNEBOT_CLI_USER="U0CLI")
    return subprocess.run([sys.executable, "-m", "tunebot.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_prints_only_its_answer(tmp_path: Path) -> None:
    out = cli(tmp_path, "run", "/tunebot ping")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Queued 🏓 ping as job #1 (queued).", out.stdout
    assert out.stderr == ""
    log = (tmp_path / "var" / "cli.log").read_text()
    assert "Context impl SQLiteImpl" in log  # Alembic's lines are kept, just not shown


def test_verbose_shows_library_logs(tmp_path: Path) -> None:
    out = cli(tmp_path, "-v", "run", "/tunebot whoami")
    assert out.returncode == 0, out.stderr
    assert "U0CLI" in out.stdout
    assert "alembic" in out.stderr.lower()


def test_usage_errors_still_reach_the_terminal(tmp_path: Path) -> None:
    out = cli(tmp_path, "run", "/prompt test x on y temperature=9")
    assert out.returncode == 2
    assert "temperature must be between" in out.stderr and "Usage:" in out.stderr
