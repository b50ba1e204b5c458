"""Import rules of the codebase, checked from the source (no imports executed):

1. No module-level import cycle among tunebot/, bot/, workers/ (and devtools/).
2. The boundaries: tunebot/ imports neither bot/ nor workers/; bot/ and workers/ never import
   each other; bench/ never imports tests/.

`python -m devtools.importcheck` prints each violation and exits 1 if there is any; `make lint`
runs it. The fresh-interpreter checks of what an import *loads* (torch, slack_sdk, …) are in
tests/test_boundaries.py.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tunebot", "bot", "workers", "devtools")
FORBIDDEN = {  # importer prefix -> imported prefixes it may not use at module level
    "tunebot": ("bot", "workers", "devtools", "tests", "bench"),
    "bot": ("workers", "devtools", "tests", "bench"),
    "workers": ("bot", "devtools", "tests", "bench"),
    "bench": ("tests",),
}


def module_name(path: Path) -> str:
    """Dotted module name of a file under ROOT."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(tree: ast.Module) -> Iterable[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (not in functions, not under
    `if TYPE_CHECKING`)."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if "TYPE_CHECKING" not in test:
                todo[:0] = [*node.body, *node.orelse]
        elif isinstance(node, ast.Try):
            todo[:0] = [*node.body, *node.orelse, *node.finalbody,
                        *(s for h in node.handlers for s in h.body)]


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The modules (among `known`, or top-level names otherwise) a file imports at load."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[:len(anchor) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.add(sub if sub in known else base)
    return out


def graph(packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module → modules of these packages it imports at module level."""
    files = [p for pkg in packages for p in (ROOT / pkg).rglob("*.py")]
    known = {module_name(p) for p in files}
    return {module_name(p): {m for m in imports_of(p, known) if m in known} for p in files}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def boundary_violations() -> list[str]:
    """Imports anywhere in a module (in functions too) that cross a forbidden boundary."""
    bad = []
    for pkg, banned in FORBIDDEN.items():
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom)
                         and not node.level else [])
                bad += [f"{module_name(path)} imports {n}" for n in names
                        if n.split(".")[0] in banned]
    return sorted(bad)


def main() -> int:
    """Print violations; exit status 1 when there is any."""
    problems = [f"import cycle: {' -> '.join(c)}" for c in cycles(graph())]
    problems += boundary_violations()
    for line in problems:
        print(line)
    print(f"importcheck: {len(problems)} problem(s)" if problems else "importcheck: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
