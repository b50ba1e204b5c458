"""Team guidelines for prompts: rules with a severity, checked when a version is saved and by
`/prompt lint`. The team edits them in `prompts/guidelines.yaml` (imported and exported with
the catalog); DEFAULT applies until a workspace imports its own, and warns only: which rules
block saving is the team's call, made in its guidelines.yaml.

The rules follow the prompt-design strategies teams use — context setting, task specification
(format, tone, level of detail), examples, documentation with measured limitations — and two
safety rules. `error` blocks saving; `warning` is shown. Pure: no database, no ML.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from tunebot.catalog.templates import content_templates, variables_used
from tunebot.errors import UserError
from tunebot.models import TeamGuidelines, utcnow

SEVERITIES = ("error", "warning", "off")
# rule id → (default severity, default parameters, what it asks)
RULES: dict[str, tuple[str, dict[str, Any], str]] = {
    "context": ("warning", {}, "a system message (or the template's opening) sets the context"),
    "task": ("warning", {}, "docs.task specifies the task"),
    "output-format": ("warning", {}, "the output format is declared (choices for a "
                                     "classification, a schema for JSON, a length limit for text)"),
    "format-in-prompt": ("warning", {}, "the prompt itself tells the model the answer format "
                                        "(names every choice, or says JSON)"),
    "examples": ("warning", {"min": 2}, "at least `min` documented examples (docs.examples)"),
    "variables-documented": ("warning", {}, "every template variable has a description"),
    "tone": ("warning", {}, "the tone is stated"),
    "prompt-tokens": ("warning", {"max": 2000}, "the prompt stays under `max` tokens"),
    "no-user-vars-in-system": ("warning", {}, "user-supplied variables never go in the system "
                                              "message (prompt injection)"),
    "limitations-measured": ("warning", {}, "docs.limitations states a measured number"),
}
NUMBER = re.compile(r"\d+(?:[.,]\d+)?\s*%|\b\d+(?:\.\d+)?\b")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")  # an unfilled MEASURED_V1-style marker


@dataclass(frozen=True)
class Rule:
    """One guideline as the team set it."""

    id: str
    severity: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Finding:
    """One rule a version breaks: where, why, and how to fix it."""

    rule: str
    severity: str
    field: str
    message: str
    fix: str

    def line(self) -> str:
        """`✗ field: message — fix` (errors) or `⚠ …` (warnings)."""
        mark = "✗" if self.severity == "error" else "⚠"
        return f"{mark} {self.field}: {self.message} — {self.fix} [{self.rule}]"


DEFAULT: tuple[Rule, ...] = tuple(Rule(k, sev, params) for k, (sev, params, _) in RULES.items())


def parse_guidelines(data: Any, where: str = "guidelines.yaml") -> tuple[Rule, ...]:
    """Rules from a `guidelines.yaml` document: `rules: {ID: error|warning|off, or
    {severity: …, PARAM: …}}`; rules it does not name keep their defaults."""
    if not isinstance(data, dict) or not isinstance(data.get("rules", {}), dict):
        raise UserError(f"{where}: expected a mapping with `rules: {{rule: severity}}`")
    given = data.get("rules") or {}
    unknown = [k for k in given if k not in RULES]
    if unknown:
        raise UserError(f"{where}: unknown rule `{str(unknown[0])[:40]}` (rules: "
                        f"{', '.join(RULES)})")
    out = []
    for rule_id, (severity, params, _) in RULES.items():
        spec = given.get(rule_id, severity)
        chosen = dict(params)
        if isinstance(spec, dict):
            extra = {k: v for k, v in spec.items() if k != "severity"}
            bad = [k for k in extra if k not in params]
            if bad:
                raise UserError(f"{where}: rules.{rule_id}: unknown parameter `{bad[0]}` "
                                f"(parameters: {', '.join(params) or 'none'})")
            for key, value in extra.items():
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise UserError(f"{where}: rules.{rule_id}.{key} must be a whole number "
                                    f"≥ 0 (got {str(value)[:20]})")
                chosen[key] = value
            spec = spec.get("severity", severity)
        if spec not in SEVERITIES:
            raise UserError(f"{where}: rules.{rule_id} must be one of {', '.join(SEVERITIES)} "
                            f"(got {str(spec)[:20]})")
        out.append(Rule(rule_id, str(spec), chosen))
    return tuple(out)


def guidelines_document(rules: tuple[Rule, ...]) -> dict[str, Any]:
    """The YAML form of a rule set (what `catalog export` writes)."""
    doc: dict[str, Any] = {}
    for rule in rules:
        defaults = RULES[rule.id][1]
        doc[rule.id] = ({"severity": rule.severity, **dict(rule.params)}
                        if dict(rule.params) != defaults or defaults else rule.severity)
    return {"rules": doc}


def estimate_tokens(text: str) -> int:
    """About how many tokens a text is for a BPE tokenizer (≈ 4 characters a token), used when
    the model's own tokenizer is not at hand."""
    return math.ceil(len(text) / 4)


def check(content: Mapping[str, Any], rules: tuple[Rule, ...] = DEFAULT, *,
          count_tokens: Callable[[str], int] | None = None) -> list[Finding]:
    """Every finding of a version's content (its canonical dict) under these rules; errors
    first. `count_tokens` is the model's tokenizer when the caller has it."""
    c = dict(content)
    docs = c.get("docs") or {}
    output = c.get("output") or {}
    fmt = output.get("format", "text")
    messages = c.get("messages") or []
    texts = content_templates(c)
    prompt_text = "\n".join(texts)
    found: list[Finding] = []

    def add(rule: Rule, field: str, message: str, fix: str) -> None:
        found.append(Finding(rule.id, rule.severity, field, message, fix))

    for rule in rules:
        if rule.severity == "off":
            continue
        if rule.id == "context" and not any(m.get("role") == "system" for m in messages) \
                and not c.get("template"):
            add(rule, "messages", "no system message sets the context for the model",
                "add a system message saying who the model is and what the input is")
        elif rule.id == "task" and not str(docs.get("task", "")).strip():
            add(rule, "docs.task", "the task is not specified", "state the task in docs.task")
        elif rule.id == "output-format":
            if fmt == "json" and not output.get("schema"):
                add(rule, "output.schema", "JSON output without a schema",
                    "add output.schema (a JSON Schema the answer must satisfy)")
            elif fmt == "text" and not (c.get("params") or {}).get("max_new_tokens"):
                add(rule, "params.max_new_tokens", "free-text output with no length limit",
                    "set params.max_new_tokens (and say the level of detail in the prompt)")
        elif rule.id == "format-in-prompt":
            lowered = prompt_text.lower()
            missing = [ch for ch in output.get("choices", []) if ch.lower() not in lowered]
            if fmt == "choice" and missing:
                add(rule, "messages", f"the prompt never names {', '.join(missing[:5])}",
                    "list every choice in the prompt and ask for exactly one")
            elif fmt == "json" and "json" not in lowered:
                add(rule, "messages", "the prompt does not ask for JSON",
                    "say the answer is a JSON object with the schema's fields")
        elif rule.id == "examples":
            need = int(rule.params.get("min", 2))
            have = len(docs.get("examples") or [])
            if have < need:
                add(rule, "docs.examples", f"{have} example(s), the team asks for {need}",
                    f"add {need - have} input/output example(s) to docs.examples")
        elif rule.id == "variables-documented":
            described = c.get("variables") or {}
            bare = sorted(v for v in set().union(*(variables_used(t) for t in texts))
                          if not str(described.get(v, "")).strip()) if texts else []
            if bare:
                add(rule, f"variables.{bare[0]}", f"{', '.join(bare)} not documented",
                    "describe each variable under `variables`")
        elif rule.id == "tone" and not str(c.get("tone", "")).strip():
            add(rule, "tone", "no tone stated", "set tone (e.g. neutral, friendly, formal)")
        elif rule.id == "prompt-tokens":
            limit = int(rule.params.get("max", 2000))
            tokens = (count_tokens or estimate_tokens)(prompt_text)
            if tokens > limit:
                approx = "" if count_tokens else "about "
                add(rule, "messages", f"the prompt is {approx}{tokens} tokens (limit {limit})",
                    "shorten it, or move reference material out of the prompt")
        elif rule.id == "no-user-vars-in-system":
            leaked = sorted(set().union(*(variables_used(m.get("content", "")) for m in messages
                                          if m.get("role") == "system"))) if messages else []
            if leaked:
                add(rule, "messages[system]", f"user-supplied {', '.join(leaked)} in the system "
                    "message", "move the variable into the user message")
        elif rule.id == "limitations-measured":
            text = str(docs.get("limitations", "")).strip()
            if not text or PLACEHOLDER.match(text) or not NUMBER.search(text):
                add(rule, "docs.limitations", "limitations without a measured number",
                    "run /prompt test and write what it measured (accuracy, where it fails)")
    found.sort(key=lambda f: (f.severity != "error", f.rule))
    return found


def errors(findings: list[Finding]) -> list[Finding]:
    """The findings that block saving."""
    return [f for f in findings if f.severity == "error"]


def refusal(findings: list[Finding]) -> str:
    """Why a version may not be saved: its error findings, each with the field and a fix."""
    return ("this version breaks the team's guidelines (prompts/guidelines.yaml):\n"
            + "\n".join(f.line() for f in errors(findings)))


def stored_rules(*, session: Session, team_id: str) -> tuple[Rule, ...] | None:
    """The workspace's guidelines as last imported, or None when it never imported any."""
    row = session.get(TeamGuidelines, team_id)
    return parse_guidelines(row.rules) if row is not None and row.rules else None


def team_rules(*, session: Session, team_id: str) -> tuple[Rule, ...]:
    """The workspace's guidelines as last imported, or DEFAULT."""
    return stored_rules(session=session, team_id=team_id) or DEFAULT


def set_team_rules(*, session: Session, team_id: str, document: Any, user: str) -> bool:
    """Store a workspace's guidelines (validated); whether they changed."""
    rules = guidelines_document(parse_guidelines(document))
    row = session.get(TeamGuidelines, team_id)
    if row is not None and row.rules == rules:
        return False
    row = row or TeamGuidelines(team_id=team_id)
    row.rules, row.updated_by, row.updated_at = rules, user, utcnow()
    session.add(row)
    return True
