"""requirements.lock against pyproject.toml: `make lock` stamps the lock with a digest of the
dependency lists it was compiled from; `python -m devtools.lockcheck` (and tests/test_lock.py)
fails when pyproject.toml's dependencies changed without `make lock`, or when a pin does not
satisfy what pyproject.toml asks for."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
STAMP = "# pyproject-dependencies-sha256: "
UNLOCKED = {"torch", "tunebot"}  # torch: pinned per image; tunebot: the project itself


def requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """Every requirement string of the base and every extra, in file order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [*project.get("dependencies", []), *(r for name in sorted(extras)
                                                 for r in extras[name])]


def digest(pyproject: Path = PYPROJECT) -> str:
    """sha256 of the dependency lists (not of the whole file: tool settings may change)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    data = {"dependencies": project.get("dependencies", []),
            "optional-dependencies": project.get("optional-dependencies", {})}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def stale(pyproject: Path = PYPROJECT, lock: Path = LOCK) -> str | None:
    """Why the lock's digest does not match pyproject.toml, or None (standard library only,
    so `make install` can ask before anything is installed)."""
    if not lock.is_file():
        return f"{lock.name} is missing: run `make lock`"
    found = re.search(rf"^{re.escape(STAMP)}(\w+)$", lock.read_text(), re.M)
    if found is None or found.group(1) != digest(pyproject):
        return (f"{pyproject.name}'s dependencies changed since {lock.name} was made: "
                "run `make lock`")
    return None


def pins(lock: Path = LOCK) -> dict[str, str]:
    """name → pinned version of every `name==version` line of the lock."""
    out = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if m:
            out[canonical(m.group(1))] = m.group(2)
    return out


def problems(pyproject: Path = PYPROJECT, lock: Path = LOCK) -> list[str]:
    """Why the lock does not match pyproject.toml (empty when it does)."""
    from packaging.requirements import Requirement  # installed with the dev extra

    why = stale(pyproject, lock)
    if why is not None and not lock.is_file():
        return [why]
    out = [why] if why else []
    pinned = pins(lock)
    for raw in requirements(pyproject):
        req = Requirement(raw)
        name = canonical(req.name)
        if name in UNLOCKED:
            continue
        if name not in pinned:
            out.append(f"{req.name} is required by {pyproject.name} but not pinned in {lock.name}")
        elif not req.specifier.contains(pinned[name], prereleases=True):
            out.append(f"{req.name}=={pinned[name]} in {lock.name} does not satisfy "
                       f"{req.specifier} in {pyproject.name}")
    return out


def stamp(lock: Path = LOCK, pyproject: Path = PYPROJECT) -> None:
    """Write the digest line at the top of a freshly compiled lock."""
    body = [line for line in lock.read_text().splitlines() if not line.startswith(STAMP)]
    header = ["# The application's pinned dependencies (base and every extra), compiled from",
              "# pyproject.toml by `make lock` (pip-compile). Install with",
              '# `pip install -c requirements.lock -e ".[extras]"`; torch is pinned per image.',
              f"{STAMP}{digest(pyproject)}"]
    body = [line for line in body if line not in header]
    lock.write_text("\n".join([*header, *body]) + "\n")


def main(argv: list[str]) -> int:
    """`--stamp` after compiling; `--digest` checks the stamp only; without arguments, the
    whole check. Exit status 1 on a mismatch."""
    if argv[1:] == ["--stamp"]:
        stamp()
        return 0
    if argv[1:] == ["--digest"]:
        why = stale()
        print(why or "lockcheck: the lock matches pyproject.toml")
        return 1 if why else 0
    found = problems()
    for line in found:
        print(line)
    print("lockcheck: ok" if not found else f"lockcheck: {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
