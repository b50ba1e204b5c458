"""Prompt templates: Jinja2 in a locked-down sandbox, strict about variables, bounded in cost.

Templates come from any member of a workspace, so rendering must never reach Python internals
and never run away with memory or CPU. Four layers:

1. a static scan refuses private attributes and the escape-prone globals before anything runs;
2. the sandbox refuses them again at run time (for names built dynamically, `|attr('__cl' ~ …)`);
3. budgets, checked before a value is built: steps (loop iterations and calls), a deadline,
   the bytes one render may build, the longest string and list, and what a list or dict would
   print as (repetition shares items, so `[s] * n` is small until it is printed or compared).
   Every filter, test, method call, operator, literal and output chunk goes through them;
4. each render runs in a child process (bounded.py) capped at MAX_MEMORY above its idle size
   and killed at MAX_SECONDS, so whatever layer 3 does not foresee still ends within bounds.

`render`, `render_messages` and `render_rows` use the child; the child itself renders with
`render_here` / `render_messages_here`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import (
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import closing
from typing import Any, cast

from jinja2 import (
    TemplateError,
    UndefinedError,
)
from jinja2.exceptions import SecurityError

from tunebot.catalog.bounded import ChildPool, Limit, Unavailable, serve
from tunebot.catalog.budget import (
    _UNDEFINED_RE,
    BATCH_ROWS,
    CHILD_CACHE,
    FORBIDDEN_NAMES,
    MAX_DEPTH,
    MAX_MEMORY,
    MAX_OUTPUT,
    MAX_SECONDS,
    MAX_STEPS,
    Refused,
    _Budget,
    _budget,
    _check_time,
)
from tunebot.catalog.sandbox import (
    _compile,
)
from tunebot.errors import UserError

log = logging.getLogger(__name__)


def variables_used(src: str) -> set[str]:
    """The variables a template reads (raises UserError on a syntax error)."""
    return set(_compile(src)[1])


def check_template(src: str, declared_vars: Iterable[str]) -> list[str]:
    """Problems with a template: syntax (with line), refused constructs, undeclared variables."""
    try:
        _, used, refusals = _compile(src)
    except UserError as exc:
        return [str(exc)]
    problems = [f"template refused: {r}" for r in refusals]
    undeclared = sorted(used - set(declared_vars) - FORBIDDEN_NAMES)
    if undeclared:
        problems.append("variables used but not declared: "
                        + ", ".join(f"`{v}`" for v in undeclared)
                        + " (add them under `variables:` with a description)")
    return problems


# ---- rendering in this process (the child's side) ------------------------------------------


def _new_budget(variables: Mapping[str, Any]) -> _Budget:
    return _Budget(inputs=variables)


def render_here(src: str, variables: Mapping[str, Any], *, limit: int = MAX_OUTPUT,
                budget: _Budget | None = None) -> str:
    """Render in this process, under the in-process budgets only (the child runs this)."""
    template, used, refusals = _compile(src)
    if refusals:
        raise UserError(f"template refused: {refusals[0]}")
    missing = sorted(v for v in used if v not in variables)
    if missing:
        names = ", ".join(f"`{v}`" for v in missing)
        raise UserError(f"missing variable{'s' if len(missing) > 1 else ''} {names} "
                        "(pass it as name=value)")
    b = budget or _new_budget(variables)
    b.steps = MAX_STEPS  # steps are per template; bytes and the deadline per render
    token = _budget.set(b)
    try:
        return _stream(template, dict(variables), limit, b)
    except (Refused, SecurityError) as exc:
        raise UserError(f"template refused: {exc}") from None
    except UndefinedError as exc:
        m = _UNDEFINED_RE.match(str(exc))
        raise UserError(f"missing variable `{m.group(1)}`" if m else
                        f"template error: {exc}") from None
    except RecursionError:
        raise UserError("template refused: it recurses too deeply") from None
    except MemoryError:
        raise UserError(f"template refused: it ran out of memory (the memory limit of a render "
                        f"is {MAX_MEMORY // 2**20} MB)") from None
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError,
            AttributeError, AssertionError) as exc:  # Jinja's truncate asserts on its length
        raise UserError(f"template error: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        _budget.reset(token)


def _stream(template: Any, variables: dict[str, Any], limit: int, b: _Budget) -> str:
    out: list[str] = []
    size = 0
    for chunk in template.generate(variables):
        size += len(chunk)
        if size > limit:
            raise UserError(f"the rendered prompt is over {limit:,} characters; "
                            "shorten the template or its inputs")
        out.append(chunk)
    _check_time(b)
    return "".join(out)


def content_templates(content: Mapping[str, Any]) -> list[str]:
    """Every template string of a version's content (each message, or the plain template)."""
    if content.get("messages"):
        return [m.get("content", "") for m in content["messages"]]
    return [content.get("template") or ""]


def _pairs(content: Mapping[str, Any]) -> list[tuple[str, str]]:
    if content.get("messages"):
        return [(m["role"], m.get("content", "")) for m in content["messages"]]
    return [("user", content.get("template") or "")]


def render_messages_here(content: Mapping[str, Any], variables: Mapping[str, Any]) -> list[
        dict[str, str]]:
    """A version's chat rendered in this process; all its messages share one render's limits
    (output, bytes and deadline)."""
    out: list[dict[str, str]] = []
    budget = MAX_OUTPUT
    b = _new_budget(variables)
    for role, src in _pairs(content):
        text = render_here(src, variables, limit=budget, budget=b)
        budget -= len(text)
        out.append({"role": role, "content": text})
    return out


def _renders(request: dict[str, Any]) -> Iterator[Any]:
    """What a request asks for, rendered here: one text, or each row's messages."""
    if request["kind"] == "text":
        yield render_here(request["src"], request["variables"], limit=request["limit"])
        return
    for row in request["rows"]:
        yield render_messages_here(request["content"], row)


def _handle(request: Any) -> Iterator[dict[str, Any]]:
    """The child's answer to one request: a reply per render, stopping at the first error."""
    try:
        for rendered in _renders(request):
            yield {"ok": rendered}
    except UserError as exc:
        yield {"error": str(exc)}
    finally:
        # Compiled templates stay in the child's memory cap: keep only the recent few (a
        # prompt test renders one version's templates over and over).
        if _compile.cache_info().currsize > CHILD_CACHE:
            _compile.cache_clear()


def serve_child() -> None:
    """The render child's main loop (started by bounded.py, never called in a parent)."""
    serve(_handle)


# ---- rendering in the bounded child (everyone else) -----------------------------------------

_POOL = ChildPool(f"{__name__}:serve_child", seconds=MAX_SECONDS, memory=MAX_MEMORY)


def _limit_error(exc: Limit) -> UserError:
    if exc.kind == "time":
        return UserError(f"template refused: it ran past the time limit of a render "
                         f"({MAX_SECONDS:g} s)")
    if exc.kind == "memory":
        return UserError(f"template refused: it needed more than the memory limit of a render "
                         f"({MAX_MEMORY // 2**20} MB)")
    return UserError("template refused: the renderer stopped while rendering it (it was "
                     "restarted)")


def _plain_json(value: Any, depth: int = 0) -> bool:
    """Whether JSON carries this value to the child unchanged (str keys, lists not tuples)."""
    if value is None or type(value) in (str, bool, int, float):
        return True
    if depth > MAX_DEPTH:
        return False
    if type(value) is list:
        return all(_plain_json(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v, depth + 1) for k, v in value.items())
    return False


def _in_child(request: dict[str, Any], replies: int) -> Iterator[Any]:
    """Each render's result, from the bounded child; UserError for a render's error or a limit
    that tripped. Where no child can start, or a variable would not travel as it is (a tuple,
    a date), the render runs here under the in-process limits alone."""
    if not _plain_json(request):
        yield from _renders(request)
        return
    failed: dict[str, Any] | None = None
    try:
        with closing(_POOL.run(json.dumps(request).encode(), replies)) as answers:
            for reply in answers:
                if "ok" in reply:
                    yield reply["ok"]
                else:
                    failed = reply  # the pool ends the request after it; the child stays warm
    except Limit as exc:
        raise _limit_error(exc) from None
    except Unavailable:
        _warn_once()
        yield from _renders(request)
        return
    if failed is not None:
        if "error" in failed:
            raise UserError(str(failed["error"]))
        raise UserError(f"template error: {failed.get('fault')}")


_warned: list[bool] = []


def _warn_once() -> None:
    if not _warned:
        _warned.append(True)
        log.warning("templates render in this process: no bounded child could start "
                    "(the in-process limits still apply)")


def render(src: str, variables: Mapping[str, Any], *, limit: int = MAX_OUTPUT) -> str:
    """Render a template in the bounded child; missing variables, refusals, oversized output and
    a limit that trips (time, memory) raise UserError."""
    request = {"kind": "text", "src": src, "variables": dict(variables), "limit": limit}
    return cast(str, list(_in_child(request, 1))[0])


def render_messages(content: Mapping[str, Any], variables: Mapping[str, Any]) -> list[
        dict[str, str]]:
    """A version's chat messages rendered; a plain template becomes one user message. All the
    messages share one render's limits."""
    return list(render_rows(content, [variables]))[0]


def render_rows(content: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> Generator[
        list[dict[str, str]], None, None]:
    """Each row's chat, rendered in the bounded child a batch at a time, yielded one by one (a
    caller may stop between any two); UserError at the first row that cannot render."""
    texts = {k: content[k] for k in ("messages", "template") if k in content}
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(dict(row))
        if len(batch) >= BATCH_ROWS:
            yield from _in_child({"kind": "messages", "content": texts, "rows": batch},
                                 len(batch))
            batch = []
    if batch:
        yield from _in_child({"kind": "messages", "content": texts, "rows": batch}, len(batch))

