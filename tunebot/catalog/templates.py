"""Prompt templates: Jinja2 in a locked-down sandbox, strict about variables, bounded in cost.

Templates come from any member of a workspace, so rendering must never reach Python internals
and never run away with memory or CPU. Three layers, each enough for the common attacks:
a static scan refuses private attributes and the escape-prone globals before anything runs;
the sandbox refuses them again at run time (for names built dynamically, `|attr('__cl' ~ …)`);
and budgets bound loops, calls, string growth and the output itself.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any, cast

from jinja2 import (
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
    pass_eval_context,
)
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from tunebot.errors import UserError

MAX_TEMPLATE = 50_000  # characters of template source
MAX_OUTPUT = 100_000  # characters a render may produce (also the longest string built inside)
MAX_ITEMS = 10_000  # longest list a template may build, and the longest range
MAX_STEPS = 20_000  # loop iterations plus calls in one render
MAX_POWER_BITS = 4_096

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
    "min", "reject", "rejectattr", "reverse", "round", "select", "selectattr", "sort", "string",
    "striptags", "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "wordcount",
})
_UNDEFINED_RE = re.compile(r"^'([^']+)' is undefined$")

_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("template_budget")


class Refused(SecurityError):
    """A template asked for something the sandbox does not allow."""


def _spend(n: int = 1) -> None:
    box = _budget.get(None)
    if box is None:
        return
    box[0] -= n
    if box[0] < 0:
        raise Refused(f"it runs more than {MAX_STEPS:,} loop iterations and calls")


def _bounded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_ITEMS:
        raise Refused(f"range() of {len(r):,} items (at most {MAX_ITEMS:,})")
    return r


def _guard_iter(value: Any) -> Iterator[Any]:
    for item in value:
        _spend()
        yield item


def _concat(parts: list[Any]) -> str:
    out: list[str] = []
    size = 0
    for part in parts:
        text = part if isinstance(part, str) else str(part)
        size += len(text)
        if size > MAX_OUTPUT:
            raise Refused(f"it builds a string over {MAX_OUTPUT:,} characters")
        out.append(text)
    return "".join(out)


def _check_len(n: int, what: str = "string") -> None:
    limit = MAX_OUTPUT if what == "string" else MAX_ITEMS
    if n > limit:
        raise Refused(f"it builds a {what} of {n:,} {'characters' if what == 'string' else 'items'}"
                      f" (at most {limit:,})")


def _replaced_len(s: str, old: str, new: str, count: int = -1) -> int:
    hits = len(s) + 1 if old == "" else s.count(old)
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * (len(new) - len(old))


@pass_eval_context  # takes the eval context first, as jinja2's own `replace` filter does
def _safe_replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> Any:
    _check_len(_replaced_len(str(s), str(old), str(new), -1 if count is None else count))
    return FILTERS["replace"](eval_ctx, s, old, new, count)


class _Guard(NodeTransformer):
    """Routes every for-loop through the step budget and every `~` through the size check."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802
        node = cast(nodes.For, self.generic_visit(node))
        node.iter = nodes.Filter(node.iter, "tb_iter", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        node = cast(nodes.Concat, self.generic_visit(node))
        items = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(items, "tb_concat", [], [], None, None, lineno=node.lineno)


class PromptSandbox(ImmutableSandboxedEnvironment):
    """The sandbox: allow-listed methods and filters, bounded operators, refusals that raise."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.globals.clear()
        self.globals.update(range=_bounded_range, dict=dict)
        self.filters = {k: v for k, v in self.filters.items() if k in SAFE_FILTERS}
        self.filters.update(replace=_safe_replace, tb_iter=_guard_iter, tb_concat=_concat)

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
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """Subscript, refusing private names given as strings."""
        if isinstance(argument, str):
            _refuse_attr(argument)
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        """Count the call against the budget and bound what string methods may build."""
        _spend()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name == "replace" and len(args) >= 2:
                _check_len(_replaced_len(owner, str(args[0]), str(args[1]),
                                         int(args[2]) if len(args) > 2 else -1))
            elif name == "join" and args:
                args = (list(args[0]), *args[1:])
                _check_len(sum(len(str(x)) for x in args[0]) + len(owner) * len(args[0]))
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Bound repetition, concatenation and powers; refuse printf-style formatting."""
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    _check_len(len(seq) * n, "string" if isinstance(seq, str) else "list")
        elif operator == "+":
            if isinstance(left, str) and isinstance(right, str):
                _check_len(len(left) + len(right))
            elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
                _check_len(len(left) + len(right), "list")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and (
                    right > 0 and max(left.bit_length(), 1) * right > MAX_POWER_BITS):
                raise Refused(f"{left} ** {right} is too large")
        elif operator == "%" and isinstance(left, str):
            raise Refused("printf-style `%` formatting of strings (use {{ … }} instead)")
        return super().call_binop(context, operator, left, right)


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


def render(src: str, variables: Mapping[str, Any], *, limit: int = MAX_OUTPUT) -> str:
    """Render a template; missing variables, refusals and oversized output raise UserError."""
    template, used, refusals = _compile(src)
    if refusals:
        raise UserError(f"template refused: {refusals[0]}")
    missing = sorted(v for v in used if v not in variables)
    if missing:
        names = ", ".join(f"`{v}`" for v in missing)
        raise UserError(f"missing variable{'s' if len(missing) > 1 else ''} {names} "
                        "(pass it as name=value)")
    token = _budget.set([MAX_STEPS])
    try:
        return _stream(template, dict(variables), limit)
    except Refused as exc:
        raise UserError(f"template refused: {exc}") from None
    except SecurityError as exc:
        raise UserError(f"template refused: {exc}") from None
    except UndefinedError as exc:
        m = _UNDEFINED_RE.match(str(exc))
        raise UserError(f"missing variable `{m.group(1)}`" if m else
                        f"template error: {exc}") from None
    except RecursionError:
        raise UserError("template refused: it recurses too deeply") from None
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError,
            AttributeError, AssertionError) as exc:  # Jinja's truncate asserts on its length
        raise UserError(f"template error: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        _budget.reset(token)


def _stream(template: Any, variables: dict[str, Any], limit: int) -> str:
    out: list[str] = []
    size = 0
    for chunk in template.generate(variables):
        size += len(chunk)
        if size > limit:
            raise UserError(f"the rendered prompt is over {limit:,} characters; "
                            "shorten the template or its inputs")
        out.append(chunk)
    return "".join(out)


def content_templates(content: Mapping[str, Any]) -> list[str]:
    """Every template string of a version's content (each message, or the plain template)."""
    if content.get("messages"):
        return [m.get("content", "") for m in content["messages"]]
    return [content.get("template") or ""]


def render_messages(content: Mapping[str, Any], variables: Mapping[str, Any]) -> list[
        dict[str, str]]:
    """A version's chat messages rendered; a plain template becomes one user message."""
    if content.get("messages"):
        pairs = [(m["role"], m.get("content", "")) for m in content["messages"]]
    else:
        pairs = [("user", content.get("template") or "")]
    out: list[dict[str, str]] = []
    budget = MAX_OUTPUT
    for role, src in pairs:
        text = render(src, variables, limit=budget)
        budget -= len(text)
        out.append({"role": role, "content": text})
    return out
