"""The budget of one template render: limits, what a value would print as (measured without
building it), and the reservations every guarded operation makes before it runs."""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import (
    ItemsView,
    Iterator,
    KeysView,
    ValuesView,
)
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Any

from jinja2.exceptions import SecurityError

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


