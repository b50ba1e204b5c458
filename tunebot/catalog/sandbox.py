"""The sandbox a prompt template runs in: every filter, test, method, operator and output
chunk guarded by the render's budget (budget.py), and what is refused before anything runs."""

from __future__ import annotations

import json
from collections.abc import (
    Callable,
)
from functools import lru_cache, wraps
from typing import Any, cast

from jinja2 import (
    StrictUndefined,
    TemplateSyntaxError,
    meta,
    nodes,
    pass_context,
    pass_eval_context,
)
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from tunebot.catalog.budget import (
    _ASCII_SPACE,
    _LINE_BREAKS,
    _NO_BUILD,
    _SPACE,
    _STR_GROWTH,
    _STR_METHOD_GROWTH,
    BLOCKED_ATTRS,
    DICT_METHODS,
    FORBIDDEN_NAMES,
    LIST_METHODS,
    MAX_OUTPUT,
    MAX_POWER_BITS,
    MAX_TEMPLATE,
    SAFE_FILTERS,
    STR_METHODS,
    Refused,
    _bounded_range,
    _Budget,
    _check_len,
    _check_time,
    _check_value,
    _guard_iter,
    _joined_len,
    _materialize,
    _nbytes,
    _printed,
    _replaced_len,
    _reserve,
    _settle,
    _spend,
    _state,
    _str_worst,
    _to_str,
    _value_cap,
)
from tunebot.errors import UserError

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


