"""JSON Schemas that stay inside themselves: the save-time check and the offline validator.

A schema comes from users (a prompt's `output.schema`, a `json-schema` scorer of a prompt or
of an eval row's `assert` list). jsonschema, left to itself, resolves a `$ref` to a URL or a
`file://` path by fetching it — from the worker, inside the network, with the fetched document's
values echoed back in error messages. tunebot fetches nothing: `ref_problems` refuses a schema
that names another document when it is saved, and `offline_validator` validates with a
`referencing.Registry` whose retrieval always refuses, for anything stored before that check.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.jsonschema import UnknownDialect, specification_with

# Keywords whose string value points at another schema, and the one that renames the base.
REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
MAX_SHOWN = 80
MAX_DEPTH = 200  # deeper is no schema a person wrote; refusing it keeps the walk bounded


class RetrievalRefused(Exception):
    """A schema asked for a document outside itself; tunebot never fetches one."""


def _refuse(uri: str) -> Resource[Any]:
    raise RetrievalRefused(uri)


def _shown(value: str) -> str:
    return value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "…"


def _walk(node: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str, Any]]:
    # Every mapping anywhere in the document, not only known schema positions: a local
    # pointer (`#/x/y`) can land inside an unknown keyword, so a reference there counts too.
    if depth > MAX_DEPTH:
        yield path, "", None
        return
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}/{key}"
            yield where, str(key), value
            yield from _walk(value, where, depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}", depth + 1)


def ref_problems(schema: Any) -> list[str]:
    """Why a schema would reach outside itself, one line per place ("at /properties/a/$ref:
    …"); empty when every reference is local (`#…`) and `$schema` names a standard dialect."""
    problems: list[str] = []
    for where, key, value in _walk(schema, ""):
        at = f"at {where or '/'}"
        if not key:
            problems.append(f"{at}: nested deeper than {MAX_DEPTH} levels")
        elif key in REF_KEYWORDS and isinstance(value, str) and not value.startswith("#"):
            problems.append(f"{at}: `{key}` points outside the schema ({_shown(value)!r}); "
                            "tunebot fetches no URL or file, so only local references "
                            "(#/$defs/…) work")
        elif key == "$id" and isinstance(value, str) and not value.startswith("#"):
            problems.append(f"{at}: `$id` ({_shown(value)!r}) would resolve references against "
                            "another document; remove it (only local references #/… work)")
        elif key == "$schema" and isinstance(value, str):
            try:
                specification_with(value)
            except UnknownDialect:
                problems.append(f"{at}: `$schema` ({_shown(value)!r}) is not a standard JSON "
                                "Schema dialect (draft-04, -06, -07, 2019-09 or 2020-12)")
    return problems


def offline_validator(schema: dict[str, Any] | bool) -> Validator:
    """A validator for `schema` that resolves only references inside it: any other lookup
    raises (a `referencing.exceptions.Unresolvable`) instead of fetching anything."""
    cls = validator_for(schema)
    # `retrieve` is an attrs field alias, which mypy's attrs plugin does not see.
    registry: Registry[Any] = Registry(retrieve=_refuse)  # type: ignore[call-arg]  # see above
    return cls(schema, registry=registry)
