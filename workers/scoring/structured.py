"""JSON scorers: is-json, json-schema and equals-json."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match
from referencing.exceptions import Unresolvable

from tunebot.jsonschemas import offline_validator, ref_problems
from workers.scoring.base import (
    Score,
    ScoreContext,
    ScorerError,
    register,
    unscored,
    verdict,
)

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_MAX_BRACE_TRIES = 20


def extract_json(text: str) -> tuple[Any, str] | None:
    """Parse JSON from an output: whole text, a ```json fence, or the first {...} block."""
    stripped = text.strip()
    try:
        return json.loads(stripped), "whole output"
    except ValueError:
        pass
    for match in _FENCE.finditer(text):
        try:
            return json.loads(match.group(1)), "```json fence"
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    start = text.find("{")
    for _ in range(_MAX_BRACE_TRIES):
        if start < 0:
            break
        try:
            obj, _end = decoder.raw_decode(text, start)
            return obj, "first {...} block"
        except ValueError:
            start = text.find("{", start + 1)
    return None


@register("is-json")
def is_json(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """Output is (or contains) valid JSON; detail says where it was found."""
    found = extract_json(output)
    if found is None:
        return verdict(spec, False, "no valid JSON found")
    return verdict(spec, True, f"parsed {found[1]}")


def _schema(spec: dict[str, Any], ctx: ScoreContext | None) -> dict[str, Any] | bool:
    schema = spec.get("schema", spec.get("value"))
    if schema is None and ctx is not None:
        schema = ctx.output_spec.get("schema")
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ScorerError(f"scorer 'json-schema': schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict | bool):
        raise ScorerError(
            "scorer 'json-schema': needs a 'schema' (an object) in the spec or the output spec"
        )
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ScorerError(f"scorer 'json-schema': invalid schema: {exc.message}") from None
    # Refused before validating, not only at save time: rows and versions stored before this
    # check existed reach here too.
    problems = ref_problems(schema)
    if problems:
        raise ScorerError(f"scorer 'json-schema': schema {problems[0]}")
    return schema


def _check_schema(spec: dict[str, Any]) -> None:
    # Without a schema in the spec, the prompt's output spec supplies it at scoring time.
    if "schema" in spec or "value" in spec:
        _schema(spec, None)


@register("json-schema", keys={"schema", "value"}, check=_check_schema)
def json_schema(
    output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext
) -> Score:
    """Output's JSON validates against the schema (spec's, else the prompt's output schema)."""
    schema = _schema(spec, ctx)
    found = extract_json(output)
    if found is None:
        return verdict(spec, False, "no valid JSON found")
    # The registry refuses every retrieval: no URL or file is ever read while validating.
    validator = offline_validator(schema)
    try:
        error = best_match(validator.iter_errors(found[0]))
    except Unresolvable as exc:
        # Named by the reference only: the error's own text may quote the whole schema.
        ref = getattr(exc, "ref", None) or getattr(exc.__cause__, "ref", None) or "?"
        raise ScorerError(f"scorer 'json-schema': cannot resolve the reference {str(ref)[:80]!r}"
                          " (only local references #/… inside the schema work)") from None
    if error is None:
        return verdict(spec, True, f"valid ({found[1]})")
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return verdict(spec, False, f"{where}: {error.message}")


def json_equal(a: Any, b: Any) -> bool:
    """Structural JSON equality where true is not 1 and 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


@register("equals-json", keys={"value"})
def equals_json(
    output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext
) -> Score:
    """Output's JSON equals the reference JSON (spec value, else the row's expected)."""
    ref: Any = spec["value"] if "value" in spec else expected
    if ref is None:
        return unscored(spec, "no reference answer")
    if isinstance(ref, str):
        try:
            ref = json.loads(ref)
        except ValueError:
            return unscored(spec, "reference answer is not JSON")
    found = extract_json(output)
    if found is None:
        return verdict(spec, False, "no valid JSON found")
    ok = json_equal(found[0], ref)
    return verdict(spec, ok, f"equal ({found[1]})" if ok else "JSON differs from the reference")
