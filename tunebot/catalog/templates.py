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

import contextvars
import json
import logging
import re
import time
from collections.abc import (
    Callable,
    Generator,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    ValuesView,
)
from contextlib import closing
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from operator import methodcaller
from typing import Any, cast

from jinja2 import (
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
    pass_context,
    pass_eval_context,
)
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from tunebot.catalog.bounded import ChildPool, Limit, Unavailable, serve
from tunebot.errors import UserError

log = logging.getLogger(__name__)

MAX_TEMPLATE = 50_000  # characters of template source
MAX_OUTPUT = 100_000  # characters a render may produce (also the longest string built inside)
MAX_ITEMS = 10_000  # longest list a template may build by repetition, and the longest range
MAX_STEPS = 20_000  # loop iterations plus calls in one render
MAX_POWER_BITS = 4_096  # the largest number `**` or `*` may make
MAX_VALUE = 1_000_000  # characters a list or dict built in a template may print as
MAX_SECONDS = 2.0  # wall clock of one render (one row's messages): the child is killed then
MAX_MEMORY = 64 * 2**20  # the child's address space above its idle size
# Checked in process, before anything is built: the bytes of strings, lists and output one
# render may build in all, and its deadline. Both sit under the child's hard limits, so the
# common bombs get a precise message and the hard limits stay a floor.
MAX_BYTES = 48 * 2**20
SOFT_SECONDS = 1.5
MAX_DEPTH = 100  # nesting of lists and dicts a size estimate follows
_EXACT = 4_096  # strings up to this length are measured exactly (repr/json of them is small)
_OPAQUE = 200  # what a function, generator or range prints as, at most
BATCH_ROWS = 64  # rows per request to the child (a reply comes back per row)
CHILD_CACHE = 32  # compiled templates a render child keeps

# Names that lead out of the sandbox in public exploits, or that exist only to build state.
FORBIDDEN_NAMES = frozenset({
    "self", "cycler", "joiner", "namespace", "lipsum", "config", "request", "session", "g",
    "url_for", "get_flashed_messages", "environment", "context",
})
BLOCKED_ATTRS = frozenset({"format", "format_map", "mro", "gi_frame", "gi_code", "cr_frame",
                           "f_globals", "f_locals", "f_builtins", "func_globals", "tb_frame"})
STR_METHODS = frozenset({
    "lower", "upper", "strip", "lstrip", "rstrip", "title", "capitalize", "casefold",
    "swapcase", "split", "rsplit", "splitlines", "startswith", "endswith", "replace", "join",
    "count", "find", "rfind", "partition", "rpartition", "removeprefix", "removesuffix",
    "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "isnumeric", "istitle",
})
DICT_METHODS = frozenset({"items", "keys", "values", "get"})
LIST_METHODS = frozenset({"index", "count"})
# Filters kept; the rest (format, center, batch, slice, wordwrap, random, …) can allocate or
# loop without bound from a small template, and prompts do not need them.
SAFE_FILTERS = frozenset({
    "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first",
    "float", "groupby", "int", "items", "join", "last", "length", "list", "lower", "map", "max",
    "min", "reject", "rejectattr", "replace", "reverse", "round", "select", "selectattr", "sort",
    "string", "striptags", "sum", "title", "tojson", "trim", "truncate", "unique", "upper",
    "wordcount",
})
# Filters that return one of their inputs (or a number): nothing new to pay for.
_NO_BUILD = frozenset({"abs", "attr", "count", "d", "default", "first", "float", "int", "last",
                       "length", "max", "min", "round"})
# Filters that turn their input into a string first, and how much longer (×) the result can
# be than that string: case mapping can triple a character (ß → SS), escaping makes `&#39;`.
_STR_GROWTH = {"capitalize": 3, "title": 3, "lower": 3, "upper": 3, "trim": 1, "striptags": 1,
               "escape": 5, "e": 5, "string": 1}
_STR_METHOD_GROWTH = {"lower": 3, "upper": 3, "title": 3, "capitalize": 3, "casefold": 3,
                      "swapcase": 3, "strip": 1, "lstrip": 1, "rstrip": 1, "removeprefix": 1,
                      "removesuffix": 1, "partition": 1, "rpartition": 1}
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ASCII_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
_SPACE = _ASCII_SPACE + "\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200b))) + \
    "\u2028\u2029\u202f\u205f\u3000"  # every character str.split() splits on
_UNDEFINED_RE = re.compile(r"^'([^']+)' is undefined$")


class Refused(SecurityError):
    """A template asked for something the sandbox does not allow, or ran into a limit."""


# ---- the budget of one render ----------------------------------------------------------------


@dataclass
class _Budget:
    """What one render may still spend; sizes measured so far are kept by id (with the object,
    so an id cannot be reused while the render lasts)."""

    steps: int = MAX_STEPS
    bytes: int = MAX_BYTES
    deadline: float = field(default_factory=lambda: time.monotonic() + SOFT_SECONDS)
    inputs: Any = None
    allowance: int | None = None
    sizes: dict[tuple[int, str], tuple[Any, int]] = field(default_factory=dict)


_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("template_budget")


def _state() -> _Budget:
    # Outside a render (Jinja folds constant expressions while compiling) each call gets a
    # fresh budget: the per-operation bounds still hold.
    b = _budget.get(None)
    return b if b is not None else _Budget()


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n:,} bytes"


def _check_time(b: _Budget) -> None:
    if time.monotonic() > b.deadline:
        raise Refused(f"it ran past the time limit of a render ({MAX_SECONDS:g} s)")


def _spend(n: int = 1, b: _Budget | None = None) -> None:
    b = b or _state()
    b.steps -= n
    if b.steps < 0:
        raise Refused(f"it runs more than {MAX_STEPS:,} loop iterations and calls "
                      "(the step limit of a render)")
    _check_time(b)


def _reserve(n: int, what: str, b: _Budget | None = None) -> None:
    """Pay for `n` bytes before they are built; Refused when the render cannot afford them."""
    b = b or _state()
    if n > b.bytes:
        if n > MAX_BYTES:
            raise Refused(f"{what} would need about {_mb(n)}, over the memory limit of a render "
                          f"({MAX_BYTES // 2**20} MB)")
        raise Refused(f"it builds more than the memory limit of a render allows "
                      f"({MAX_BYTES // 2**20} MB of strings and lists in all)")
    b.bytes -= n
    _check_time(b)


def _refund(n: int, b: _Budget | None = None) -> None:
    (b or _state()).bytes += n


def _nbytes(value: Any) -> int:
    """About what a built value occupies (its own allocation, not what it refers to)."""
    if isinstance(value, str):
        return 49 + len(value) * (1 if value.isascii() else 4)
    if isinstance(value, list | tuple):
        return 56 + 8 * len(value)
    if isinstance(value, dict):
        return 64 + 48 * len(value)
    return 32


def _str_worst(chars: int) -> int:
    return 49 + 4 * chars


# ---- sizes measured without building ---------------------------------------------------------

_CONTAINERS = (list, tuple, dict, set, frozenset, KeysView, ValuesView, ItemsView)


def _quoted(s: str, mode: str, b: _Budget) -> int:
    """Length of repr(s) ("repr"), of its JSON as `tojson` writes it ("json"), or a bound; in
    "size" mode the length plus quotes (the shape of a value, escapes aside)."""
    if mode == "size":
        return len(s) + 2
    if len(s) <= _EXACT:
        if mode == "repr":
            return len(repr(s))
        return len(json.dumps(s)) + 5 * sum(s.count(c) for c in "<>&'")
    key = (id(s), mode)
    hit = b.sizes.get(key)
    if hit is not None and hit[0] is s:
        return hit[1]
    if s.isascii() and s.isprintable():
        n = len(s) + 2 + s.count("\\") + (s.count("'") if mode == "repr" else
                                           s.count('"') + 5 * sum(s.count(c) for c in "<>&'"))
    else:
        n = 12 * len(s) + 2  # \U0010ffff in a repr, a surrogate pair in JSON
    b.sizes[key] = (s, n)
    return n


def _flat_strings(value: list[Any] | tuple[Any, ...], mode: str) -> int | None:
    """The printed size of a list of plain strings in a few C-speed passes (a split, a string's
    characters, a repeated string), or None when the fast path does not apply."""
    if set(map(type, value)) != {str}:
        return None
    base = 2 + 4 * len(value) + sum(map(len, value))
    if mode == "size":
        return base
    if not (all(map(str.isascii, value)) and all(map(str.isprintable, value))):
        return None

    def count(c: str) -> int:
        return int(sum(map(methodcaller("count", c), value)))

    if mode == "repr":
        return base + count("\\") + count("'")
    return base + count("\\") + count('"') + 5 * sum(count(c) for c in "<>&'")


def _printed(value: Any, mode: str = "str", cap: int = MAX_BYTES, depth: int = 0,
             b: _Budget | None = None) -> int:
    """An upper bound on len(str(value)) ("str"), len(repr(value)) ("repr") or the length of
    its `tojson` ("json"), computed without building it; "size" is the same shape without
    escapes (what the value limit measures). Counting stops once past `cap`."""
    if isinstance(value, str):
        return len(value) if mode == "str" else _quoted(value, mode, b or _state())
    if value is None or isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return value.bit_length() * 10 // 33 + 2  # digits: log10(2) < 10/33
    if isinstance(value, float):
        return 24
    if not isinstance(value, _CONTAINERS):
        return _OPAQUE
    b = b or _state()
    inner = mode if mode in ("json", "size") else "repr"
    key = (id(value), inner)
    hit = b.sizes.get(key)
    if hit is not None and hit[0] is value:
        return hit[1]
    if depth > MAX_DEPTH:
        raise Refused(f"it nests lists or dicts more than {MAX_DEPTH} levels deep")
    flat = _flat_strings(value, inner) if isinstance(value, list | tuple) and value else None
    if flat is not None:
        b.sizes[key] = (value, flat)
        return flat
    total = 2
    if type(value) not in (list, tuple, dict):  # subclasses and views print their name
        total += len(type(value).__name__) + 2 + sum(len(f) + 1 for f in
                                                    getattr(value, "_fields", ()))
    if isinstance(value, dict | ItemsView):
        pairs = value.items() if isinstance(value, dict) else value
        for k, v in pairs:
            total += 8 + _printed(k, inner, cap, depth + 1, b)
            if total <= cap:
                total += _printed(v, inner, cap, depth + 1, b)
            if total > cap:
                return total
    else:
        for item in value:
            total += 2 + _printed(item, inner, cap, depth + 1, b)
            if total > cap:
                return total
    b.sizes[key] = (value, total)
    return total


def _value_cap(b: _Budget) -> int:
    """How large a built list or dict may print: MAX_VALUE, or as large as the render's own
    variables print (a copy or a sorted view of them is no bomb)."""
    if b.allowance is None:
        b.allowance = 0 if b.inputs is None else _printed(b.inputs, "size", cap=MAX_BYTES, b=b)
    return max(MAX_VALUE, b.allowance)


def _check_value(value: Any, b: _Budget, what: str = "") -> None:
    """A list or dict just built (small itself) must not print as more than the value cap."""
    cap = _value_cap(b)
    size = _printed(value, "size", cap=cap, b=b)
    if size > cap:
        kind = what or type(value).__name__
        raise Refused(f"it builds a {kind} that would print as over {cap:,} characters "
                      f"(about {size:,}; the size limit of a value)")


def _check_len(n: int, what: str = "string") -> None:
    limit = MAX_OUTPUT if what == "string" else MAX_ITEMS
    if n > limit:
        raise Refused(f"it builds a {what} of {n:,} {'characters' if what == 'string' else 'items'}"
                      f" (at most {limit:,})")


def _settle(result: Any, worst: int, b: _Budget) -> Any:
    """After an operation that reserved `worst` bytes: pay for what it really built, check it,
    and make a lazy result pay per item."""
    _refund(worst, b)
    if isinstance(result, str):
        _check_len(len(result))
        _reserve(_nbytes(result), "a string", b)
    elif isinstance(result, list | tuple | dict):
        _reserve(_nbytes(result), f"a {type(result).__name__} of {len(result):,} items", b)
        _check_value(result, b)
    elif isinstance(result, Iterator):
        return _timed_iter(result)
    return result


def _to_str(value: Any, b: _Budget) -> str:
    """str(value), its size bounded and paid for before it is built."""
    if isinstance(value, str):
        return value
    est = _printed(value, "str", cap=b.bytes, b=b)
    worst = _str_worst(est)
    _reserve(worst, f"printing a {type(value).__name__} of about {est:,} characters", b)
    text = str(value)
    _refund(worst, b)
    _reserve(_nbytes(text), "a string", b)
    return text


def _materialize(value: Any, b: _Budget) -> list[Any]:
    """The items of an iterable as a list, paid for, so they can be measured before use. A lazy
    one (a map, a select) already pays a step per item it yields."""
    if hasattr(value, "__len__"):
        _reserve(56 + 8 * len(value), f"a list of {len(value):,} items", b)
    out = list(value)
    _reserve(56 + 8 * len(out), f"a list of {len(out):,} items", b)
    return out


def _guard_iter(value: Any) -> Iterator[Any]:
    """A for-loop's items, a step each."""
    b = _state()
    for item in value:
        _spend(1, b)
        yield item


def _timed_iter(value: Iterator[Any]) -> Iterator[Any]:
    """A lazy filter's items (map, select, …), each checked against the deadline."""
    b = _state()
    for item in value:
        _check_time(b)
        yield item


def _bounded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_ITEMS:
        raise Refused(f"range() of {len(r):,} items (at most {MAX_ITEMS:,})")
    return r


def _replaced_len(s: str, old: str, new: str, count: int = -1) -> int:
    hits = len(s) + 1 if old == "" else s.count(old)
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * (len(new) - len(old))


def _joined_len(items: list[Any], sep: str, b: _Budget) -> int:
    total = len(sep) * max(len(items) - 1, 0)
    for item in items:
        total += _printed(item, "str", cap=b.bytes, b=b)
        if total > b.bytes:
            break
    return total


# ---- the guarded pieces the compiled template calls ----------------------------------------


@pass_context  # never folded at compile time: every chunk, literal text too, is paid at run time
def _out(_: Any, value: Any) -> str:
    """One output chunk (`{{ … }}` or literal text), in a macro or a {% set %} block too."""
    b = _state()
    text = _to_str(value, b)
    _reserve(_nbytes(text), "the output", b)
    return text


def _concat(parts: list[Any]) -> str:
    """`a ~ b ~ …`: each part's printed size is bounded and paid for before it is built."""
    b = _state()
    texts: list[str] = []
    size = 0
    for part in parts:
        text = _to_str(part, b)
        size += len(text)
        if size > MAX_OUTPUT:
            raise Refused(f"it builds a string over {MAX_OUTPUT:,} characters")
        texts.append(text)
    _reserve(_str_worst(size), "a string", b)
    return "".join(texts)


@pass_eval_context
def _tojson(_: Any, value: Any, indent: int | str | None = None) -> Markup:
    """Jinja's `tojson`, written a piece at a time and refused once over MAX_OUTPUT (a shared
    list would otherwise be written whole first)."""
    if indent is not None and (len(indent) if isinstance(indent, str) else indent) > 16:
        raise Refused("tojson indent is at most 16")
    b = _state()
    out: list[str] = []
    size = 0
    for i, chunk in enumerate(json.JSONEncoder(sort_keys=True, indent=indent).iterencode(value)):
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise Refused(f"its JSON is over {MAX_OUTPUT:,} characters")
        out.append(chunk)
        if i % 1024 == 0:
            _check_time(b)
    _reserve(_str_worst(size) * 2, "a JSON string", b)
    text = "".join(out)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
                  .replace("'", "\\u0027"))


def _check_built(value: Any) -> Any:
    """A list, tuple or dict literal that holds variables, checked once built (it is small)."""
    b = _state()
    _reserve(_nbytes(value), f"a {type(value).__name__}", b)
    _check_value(value, b)
    return value


def _filter_worst(name: str, args: list[Any], kwargs: dict[str, Any], lead: int,
                  env: Any, b: _Budget) -> int:
    """Bytes the filter may build at most, measured on its arguments (rewritten in place so the
    filter gets what was measured: a string instead of a container, a list for a generator)."""
    value = args[lead]
    if name in _STR_GROWTH:
        text = _to_str(value, b)
        args[lead] = text
        growth = 1 if text.isascii() and name not in ("escape", "e") else _STR_GROWTH[name]
        return _str_worst(len(text) * growth)
    if name == "wordcount":
        text = _to_str(value, b)
        args[lead] = text
        return (len(text) // 2 + 1) * 57  # the list of words it finds (then drops)
    if name == "replace":
        text = _to_str(value, b)
        old = _to_str(args[lead + 1] if len(args) > lead + 1 else kwargs.get("old", ""), b)
        new = _to_str(args[lead + 2] if len(args) > lead + 2 else kwargs.get("new", ""), b)
        count = args[lead + 3] if len(args) > lead + 3 else kwargs.get("count")
        args[lead:lead + 3] = [text, old, new]
        kwargs.pop("old", None)
        kwargs.pop("new", None)
        n = _replaced_len(text, old, new, -1 if count is None else int(count))
        _check_len(n)
        return _str_worst(n)
    if name == "join":
        attribute = kwargs.pop("attribute", None)
        if len(args) > lead + 2:
            attribute = args.pop(lead + 2)
        items = _materialize(value, b)
        if attribute is not None:
            items = [make_attrgetter(env, attribute)(x) for x in items]
        sep = _to_str(args[lead + 1] if len(args) > lead + 1 else kwargs.get("d", ""), b)
        args[lead] = items
        return _str_worst(_joined_len(items, sep, b))
    if name == "list" or name == "reverse":
        if isinstance(value, str):
            return _str_worst(len(value)) + 56 + 8 * len(value) + (
                0 if value.isascii() else 80 * len(value))
        return 0  # a copy of something that exists, paid when settled
    if name == "sum":
        start = args[lead + 2] if len(args) > lead + 2 else kwargs.get("start", 0)
        if isinstance(start, list | tuple):
            items = _materialize(value, b)
            attribute = args[lead + 1] if len(args) > lead + 1 else kwargs.get("attribute")
            if attribute is not None:
                items = [make_attrgetter(env, attribute)(x) for x in items]
                if len(args) > lead + 1:
                    args[lead + 1] = None
                kwargs.pop("attribute", None)
            args[lead] = items
            n = len(start) + sum(len(x) for x in items if isinstance(x, list | tuple))
            _check_len(n, "list")
            return 56 + 8 * n
        return 0
    if name == "truncate":
        end = args[lead + 3] if len(args) > lead + 3 else kwargs.get("end", "...")
        if isinstance(value, str):
            return _str_worst(len(value) + _printed(end, "str", b=b))
        return 0
    return 0


def _guarded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that pays a step, measures what it will build before it runs, and settles after.
    """
    pass_arg = getattr(fn, "jinja_pass_arg", None)  # context, eval context or environment
    lead = 0 if pass_arg is None else 1

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        b = _state()
        _check_time(b)
        if len(args) <= lead:
            return fn(*args, **kwargs)  # Jinja's own error for a missing argument
        if name in _NO_BUILD:
            return fn(*args, **kwargs)
        arglist = list(args)
        env = getattr(args[0], "environment", args[0]) if lead else _ENV
        worst = _filter_worst(name, arglist, kwargs, lead, env, b)
        _reserve(worst, f"the `{name}` filter", b)
        return _settle(fn(*arglist, **kwargs), worst, b)

    if pass_arg is not None:
        run.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]  # Jinja reads it off the function
    return run


def _guarded_test(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A test that checks the deadline (select/reject call one per item)."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        _check_time(_state())
        return fn(*args, **kwargs)

    pass_arg = getattr(fn, "jinja_pass_arg", None)
    if pass_arg is not None:
        run.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]  # Jinja reads it off the function
    return run


def _method_worst(owner: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                  b: _Budget) -> tuple[int, tuple[Any, ...]]:
    """Bytes a str method may build at most, and its arguments (a join's items as a list)."""
    width = 1 if owner.isascii() else 4
    if name == "replace" and len(args) >= 2:
        if not (isinstance(args[0], str) and isinstance(args[1], str)):
            return 0, args  # str.replace refuses anything else, before building anything
        n = _replaced_len(owner, args[0], args[1], int(args[2]) if len(args) > 2 else -1)
        _check_len(n)
        return _str_worst(n), args
    if name == "join" and args:
        items = _materialize(args[0], b)
        return _str_worst(_joined_len(items, owner, b)), (items, *args[1:])
    if name in ("split", "rsplit", "splitlines"):
        sep = args[0] if args and name != "splitlines" else kwargs.get("sep")
        if name == "splitlines":
            pieces = sum(owner.count(c) for c in _LINE_BREAKS) + 1
        elif isinstance(sep, str) and sep:
            pieces = owner.count(sep) + 1
        else:
            spaces = _ASCII_SPACE if owner.isascii() else _SPACE
            pieces = sum(owner.count(c) for c in spaces) + 1
        return 56 + pieces * (8 + 49) + len(owner) * width, args
    growth = _STR_METHOD_GROWTH.get(name)
    if growth is not None:
        return _str_worst(len(owner) * (1 if owner.isascii() else growth)), args
    if name in STR_METHODS:
        return 0, args  # counts, searches and tests: nothing built
    return _str_worst(len(owner) * 6), args  # Markup's own methods (striptags, unescape)


class _Guard(NodeTransformer):
    """Routes every for-loop through the step budget, every `~`, output chunk and container
    literal through the size checks."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802
        node = cast(nodes.For, self.generic_visit(node))
        node.iter = nodes.Filter(node.iter, "tb_iter", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        node = cast(nodes.Concat, self.generic_visit(node))
        items = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(items, "tb_concat", [], [], None, None, lineno=node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:  # noqa: N802
        node = cast(nodes.Output, self.generic_visit(node))
        node.nodes = [nodes.Filter(nodes.Const(child.data, lineno=child.lineno)
                                   if isinstance(child, nodes.TemplateData) else child,
                                   "tb_out", [], [], None, None, lineno=child.lineno)
                      for child in node.nodes]
        return node

    def _literal(self, node: nodes.Expr) -> nodes.Node:
        node = cast(nodes.Expr, self.generic_visit(node))
        if all(isinstance(n, nodes.Const) for n in node.iter_child_nodes()):
            return node  # folded while compiling: bounded by the template's own size
        return nodes.Filter(node, "tb_value", [], [], None, None, lineno=node.lineno)

    def visit_List(self, node: nodes.List) -> nodes.Node:  # noqa: N802
        return self._literal(node)

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:  # noqa: N802
        if all(isinstance(p.key, nodes.Const) and isinstance(p.value, nodes.Const)
               for p in node.items):
            return self.generic_visit(node)
        return nodes.Filter(cast(nodes.Expr, self.generic_visit(node)), "tb_value", [], [],
                            None, None, lineno=node.lineno)

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:  # noqa: N802
        if node.ctx != "load":
            return self.generic_visit(node)  # an assignment target, not a value
        return self._literal(node)


class PromptSandbox(ImmutableSandboxedEnvironment):
    """The sandbox: allow-listed methods and filters, bounded operators, refusals that raise."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.globals.clear()
        self.globals.update(range=_bounded_range, dict=dict)
        self.filters = {k: _guarded_filter(k, v) for k, v in self.filters.items()
                        if k in SAFE_FILTERS}
        self.filters["tojson"] = _guarded_filter("tojson", _tojson)
        self.filters.update(tb_iter=_guard_iter, tb_concat=_concat, tb_out=_out,
                            tb_value=_check_built)
        self.tests = {k: _guarded_test(cast(Callable[..., Any], v))
                      for k, v in self.tests.items()}

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        return cast(nodes.Template, _Guard().visit(tree))

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """Only plain data methods on str/dict/list; the sandbox's own rules for the rest."""
        if attr.startswith("_") or attr in BLOCKED_ATTRS:
            return False
        if isinstance(obj, str) and hasattr(str, attr):
            return attr in STR_METHODS
        if isinstance(obj, dict) and hasattr(dict, attr):
            return attr in DICT_METHODS
        if isinstance(obj, list | tuple) and hasattr(list, attr):
            return attr in LIST_METHODS
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        """Raise at once: a refused attribute must not turn into a quiet Undefined."""
        raise Refused(f"`.{attribute}` of a {type(obj).__name__} is not allowed")

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Refuse private and escape-prone attributes before Python looks them up."""
        _refuse_attr(attribute)
        _check_time(_state())
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """Subscript, refusing private names given as strings; a slice is a new value."""
        if isinstance(argument, str):
            _refuse_attr(argument)
        b = _state()
        _check_time(b)
        value = super().getitem(obj, argument)
        if isinstance(argument, slice) and isinstance(value, str | list | tuple):
            _reserve(_nbytes(value), "a slice", b)
        return value

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        """Count the call against the budget and bound what string methods may build."""
        b = _state()
        _spend(1, b)
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        worst = 0
        if isinstance(owner, str):
            worst, args = _method_worst(owner, name, args, kwargs, b)
        elif isinstance(owner, dict | list | tuple):
            return super().call(__context, __obj, *args, **kwargs)  # views, lookups, counts
        _reserve(worst, f"`{name or 'a call'}`", b)
        return _settle(super().call(__context, __obj, *args, **kwargs), worst, b)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Bound repetition, concatenation, products and powers before they are built; refuse
        printf-style formatting."""
        b = _state()
        _check_time(b)
        worst = 0
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_POWER_BITS:
                    raise Refused(f"a product of more than {MAX_POWER_BITS:,} bits")
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and \
                        not isinstance(seq, bool):
                    count = len(seq) * max(n, 0)
                    if isinstance(seq, str):
                        _check_len(count)
                        worst = _str_worst(count) if not seq.isascii() else 49 + count
                    else:
                        _check_len(count, "list")
                        size = _printed(seq, "size", b=b) * max(n, 0)
                        cap = _value_cap(b)
                        if size > cap:
                            raise Refused(f"it builds a list that would print as over {cap:,} "
                                          f"characters (about {size:,}; the size limit of a "
                                          "value)")
                        worst = 56 + 8 * count
                    break
        elif operator == "+":
            if isinstance(left, str) and isinstance(right, str):
                _check_len(len(left) + len(right))
                worst = _str_worst(len(left) + len(right))
            elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
                _check_len(len(left) + len(right), "list")
                worst = 56 + 8 * (len(left) + len(right))
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and (
                    right > 0 and max(left.bit_length(), 1) * right > MAX_POWER_BITS):
                raise Refused(f"{left} ** {right} is too large")
        elif operator == "%" and isinstance(left, str):
            raise Refused("printf-style `%` formatting of strings (use {{ … }} instead)")
        _reserve(worst, f"`{operator}`", b)
        return _settle(super().call_binop(context, operator, left, right), worst, b)


def _refuse_attr(attribute: str) -> None:
    if attribute.startswith("_") or attribute in BLOCKED_ATTRS:
        raise Refused(f"`{attribute}` is not allowed (attributes starting with _ and "
                      "`format`-style tricks are blocked)")


_ENV = PromptSandbox()


def _static_refusals(tree: nodes.Template) -> list[str]:
    out: list[str] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Extends,
                               nodes.Include, nodes.Import, nodes.FromImport)):
        if isinstance(node, nodes.Getattr):
            bad = node.attr.startswith("_") or node.attr in BLOCKED_ATTRS
            what = node.attr
        elif isinstance(node, nodes.Getitem):
            arg = node.arg
            what = arg.value if isinstance(arg, nodes.Const) and isinstance(arg.value, str) else ""
            bad = bool(what) and (what.startswith("_") or what in BLOCKED_ATTRS)
        elif isinstance(node, nodes.Name):
            what, bad = node.name, node.name in FORBIDDEN_NAMES or node.name.startswith("_")
        else:
            out.append(f"line {node.lineno}: extends/include/import are not available in prompts")
            continue
        if bad:
            out.append(f"line {node.lineno}: `{what}` is not allowed")
    return list(dict.fromkeys(out))


@lru_cache(maxsize=512)
def _compile(src: str) -> tuple[Any, frozenset[str], tuple[str, ...]]:
    """Parse, scan and compile once per distinct source: (template, variables used, refusals)."""
    if len(src) > MAX_TEMPLATE:
        raise UserError(f"the template is {len(src):,} characters long (at most {MAX_TEMPLATE:,})")
    try:
        tree = _ENV.parse(src)
        refusals = tuple(_static_refusals(tree))
        # Unknown filters and tests surface here, as TemplateAssertionError (a syntax error).
        used = frozenset(meta.find_undeclared_variables(tree) - set(_ENV.globals))
        template = None if refusals else _ENV.from_string(tree)
    except TemplateSyntaxError as exc:
        raise UserError(f"template syntax error at line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise UserError("template syntax error: it nests expressions too deeply") from None
    return template, used, refusals


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
