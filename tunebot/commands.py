"""The command grammar: one parser for Slack, mentions and the CLI, text in, typed command out."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunebot.errors import UserError

FAMILIES = ("prompt", "dataset", "finetune", "model", "compare", "watch", "tunebot")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
REF_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9_.-]{0,62})"
    r"(?:@(?P<version>\d{1,6})|:(?P<label>[a-z0-9][a-z0-9_-]{0,62}))?$"
)
LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
KEY_RE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
MAX_TEXT = 4000
WATCH_ACTIONS = ("list", "stop")  # reserved after /watch: never read as a prompt name


@dataclass(frozen=True)
class Param:
    """A k=v option: its type and allowed range."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    # A value with a grammar of its own (every=day, channel=<#C…>): (key, raw, usage) → value.
    parse: Callable[[str, str, str], Any] | None = None

    def convert(self, key: str, raw: str, usage: str) -> Any:
        """Convert and range-check a raw value, or raise a UserError naming the range."""
        if self.parse is not None:
            return self.parse(key, raw, usage)
        if self.choices:
            if raw not in self.choices:
                raise UserError(f"{key} must be one of {', '.join(self.choices)} (got {raw})",
                                usage)
            return raw
        try:
            value = self.kind(raw)
        except ValueError:
            raise UserError(f"{key} must be {'an integer' if self.kind is int else 'a number'} "
                            f"(got {raw[:40]})", usage) from None
        # nan compares false with every bound, so it would pass a range check: refused here.
        if isinstance(value, float) and not math.isfinite(value):
            bounds = f" between {self.lo:g} and {self.hi:g}" if self.lo is not None and \
                self.hi is not None else ""
            raise UserError(f"{key} must be a finite number{bounds} (got {raw[:40]})", usage)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise UserError(f"{key} must be between {self.lo:g} and {self.hi:g} (got {raw[:40]})",
                            usage)
        return value


EVERY_WORDS = {"hour": 3600, "hourly": 3600, "day": 86400, "daily": 86400,
               "week": 604800, "weekly": 604800}
_EVERY_RE = re.compile(r"^(?P<n>\d{1,9})(?P<unit>[smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_EVERY = 366 * 86400
_CHANNEL_RE = re.compile(r"^(?:<#(?P<mention>[CG][A-Z0-9]{2,20})(?:\|[^>]*)?>|"
                         r"(?P<id>[CGD][A-Z0-9]{2,20}))$")


def parse_every(key: str, raw: str, usage: str) -> int:
    """every=hour|day|week (hourly, daily, weekly too) or seconds (3600, or 30m, 6h, 2d, 1w)."""
    value = raw.strip().lower()
    if value in EVERY_WORDS:
        return EVERY_WORDS[value]
    m = _EVERY_RE.match(value)
    if not m:
        raise UserError(f"{key} must be hour, day, week or a number of seconds such as 7200 "
                        f"(or 30m, 6h, 2d) (got {raw[:40]})", usage)
    seconds = int(m.group("n")) * _UNITS[m.group("unit")]
    if not 1 <= seconds <= MAX_EVERY:
        raise UserError(f"{key} must be between 1 second and 366 days (got {raw[:40]})", usage)
    return seconds


def parse_channel(key: str, raw: str, usage: str) -> str:
    """channel=#name as Slack sends it (<#C0123|name>) or a channel id (C0123ABC); the id."""
    m = _CHANNEL_RE.match(raw.strip())
    if not m:
        raise UserError(f"{key} must be a channel mention (type # and pick the channel, so Slack "
                        f"sends its id) or a channel id such as C0123ABC (got {raw[:40]})",
                        usage)
    return m.group("mention") or m.group("id")


GEN_PARAMS = {
    "model": Param(str),
    "samples": Param(int, 1, 20),
    "temperature": Param(float, 0.0, 2.0),
    "max_tokens": Param(int, 1, 4096),
}


@dataclass(frozen=True)
class Spec:
    """One subcommand: its usage line, positional pattern, options and flags."""

    usage: str
    pattern: tuple[str, ...] = ()  # lower-case words are literals; UPPER are captures; X* = rest
    params: dict[str, Param] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    any_params: bool = False  # free k=v pairs (render variables, fine-tune hyperparameters)
    job: bool = False  # whether it creates a job (needs an idempotency key)
    policy: str = "anyone"  # who may run it: anyone, admin, or finetune (the allow-list)
    form: bool = False  # in Slack it opens the prompt form instead of answering in text


SPECS: dict[tuple[str, str], Spec] = {
    ("prompt", "list"): Spec("/prompt list [QUERY]", ("QUERY*",)),
    ("prompt", "show"): Spec("/prompt show REF", ("REF",)),
    ("prompt", "new"): Spec("/prompt new  (with a YAML file, or the form in Slack)",
                            form=True),
    ("prompt", "edit"): Spec("/prompt edit NAME  (with a YAML file, or the form in Slack)",
                             ("NAME",), form=True),
    ("prompt", "history"): Spec("/prompt history NAME", ("NAME",)),
    ("prompt", "diff"): Spec("/prompt diff REF REF", ("REF", "REF2")),
    # An admin overrides the production gate with `force reason="…"` (said where it refuses).
    ("prompt", "label"): Spec("/prompt label REF LABEL", ("REF", "LABEL"),
                              {"reason": Param(str)}, ("force",)),
    ("prompt", "render"): Spec("/prompt render REF k=v…", ("REF",), any_params=True),
    ("prompt", "delete"): Spec("/prompt delete NAME", ("NAME",)),
    ("prompt", "lint"): Spec("/prompt lint REF", ("REF",)),
    ("prompt", "test"): Spec(
        "/prompt test REF on DATASET [model=M] [samples=K] [temperature=T] [max_tokens=N] "
        "[template=minimal|full]",
        ("REF", "on", "DATASET"),
        {**GEN_PARAMS, "template": Param(str, choices=("minimal", "full"))}, job=True),
    ("prompt", "compare"): Spec(
        "/prompt compare REF REF on DATASET [model=M] [samples=K] [temperature=T] [max_tokens=N]",
        ("REF", "REF2", "on", "DATASET"), GEN_PARAMS, job=True),
    ("prompt", "optimize"): Spec(
        "/prompt optimize REF on DATASET [train=DATASET] [model=M] [budget=N] "
        "[proposer=openai:NAME]",
        ("REF", "on", "DATASET"),
        {"train": Param(str, parse=lambda k, raw, usage: parse_name(raw, usage, "dataset name")),
         "model": Param(str), "budget": Param(int, 4, 200),
         "proposer": Param(str, parse=lambda k, raw, usage: parse_proposer(raw, usage))},
        job=True),
    ("dataset", "list"): Spec("/dataset list"),
    ("dataset", "show"): Spec("/dataset show NAME", ("NAME",)),
    ("dataset", "add"): Spec("/dataset add NAME [expected=COLUMN]  (with a file)", ("NAME",),
                             {"expected": Param(str)}),
    ("dataset", "check"): Spec(
        "/dataset check NAME model=M [prompt=REF] [template=minimal|full]", ("NAME",),
        {"model": Param(str), "prompt": Param(str),
         "template": Param(str, choices=("minimal", "full"))}, job=True),
    ("dataset", "delete"): Spec("/dataset delete NAME", ("NAME",)),
    ("finetune", "start"): Spec(
        "/finetune start M on DATASET [prompt=REF] [template=minimal|full] [name=N] [k=v…]",
        ("M", "on", "DATASET"), any_params=True, job=True, policy="finetune"),
    ("finetune", "estimate"): Spec(
        "/finetune estimate M on DATASET [prompt=REF] [template=minimal|full] [k=v…]",
        ("M", "on", "DATASET"), any_params=True, job=True),
    ("finetune", "status"): Spec("/finetune status JOB", ("JOB",)),
    ("finetune", "list"): Spec("/finetune list"),
    ("finetune", "cancel"): Spec("/finetune cancel JOB", ("JOB",)),
    ("model", "list"): Spec("/model list"),
    ("model", "show"): Spec("/model show NAME", ("NAME",)),
    # A protected label moves through the production gate (queues a model_compare job).
    ("model", "label"): Spec("/model label NAME@V LABEL", ("REF", "LABEL"),
                             {"reason": Param(str)}, ("force",), job=True, policy="admin"),
    ("compare", "vs"): Spec(
        "/compare REF vs M on DATASET [hybrid] [traffic=N/day]",
        ("REF", "vs", "M", "on", "DATASET"), {"traffic": Param(str)}, ("hybrid",), job=True),
    ("compare", "name"): Spec("/compare NAME on DATASET [hybrid] [traffic=N/day]",
                              ("NAME", "on", "DATASET"), {"traffic": Param(str)}, ("hybrid",),
                              job=True),
    # The whole fight (tunebot/handlers/compare.py): it may fine-tune, hence the policy.
    ("compare", "fair"): Spec(
        "/compare REF on DATASET fair [model=M] [budget=N] [traffic=N/day]",
        ("REF", "on", "DATASET"),
        {"traffic": Param(str), "model": Param(str), "budget": Param(int, 4, 200)}, ("fair",),
        job=True, policy="finetune"),
    # Setting a watch makes jobs on its schedule (job=True: a resent request finds the same
    # watch); `list` and `stop` are subcommands, never prompt names, after /watch.
    ("watch", "set"): Spec(
        "/watch REF on DATASET every=hour|day|week [model=M] [channel=#C]",
        ("REF", "on", "DATASET"),
        {"every": Param(str, parse=parse_every), "model": Param(str),
         "channel": Param(str, parse=parse_channel)}, job=True),
    ("watch", "list"): Spec("/watch list"),
    ("watch", "stop"): Spec("/watch stop ID", ("ID",)),
    ("tunebot", "help"): Spec("/tunebot help [TOPIC]", ("TOPIC*",)),
    ("tunebot", "jobs"): Spec("/tunebot jobs"),
    ("tunebot", "whoami"): Spec("/tunebot whoami"),
    ("tunebot", "ping"): Spec("/tunebot ping [seconds=S]", (),
                              {"seconds": Param(float, 0, 60)}, job=True),
    ("tunebot", "cancel"): Spec("/tunebot cancel JOB", ("JOB",)),
}


@dataclass(frozen=True)
class Ref:
    """A catalog reference: NAME, NAME@3 or NAME:production."""

    name: str
    version: int | None = None
    label: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.label is not None:
            return f"{self.name}:{self.label}"
        return self.name


@dataclass
class Command:
    """A parsed command: family, action, captured positionals, options and flags."""

    family: str
    action: str
    args: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    text: str = ""

    @property
    def spec(self) -> Spec:
        """This command's spec."""
        return SPECS[(self.family, self.action)]


def usage_for(family: str) -> str:
    """All usage lines of a family."""
    return "\n".join(s.usage for (f, _), s in SPECS.items() if f == family)


def parse_ref(raw: str, usage: str) -> Ref:
    """Parse NAME, NAME@V or NAME:LABEL."""
    m = REF_RE.match(raw)
    if not m:
        raise UserError(f"`{raw}` is not a valid reference (NAME, NAME@3 or NAME:production; "
                        "names are lower-case letters, digits, - _ .)", usage)
    version = m.group("version")
    return Ref(m.group("name"), int(version) if version else None, m.group("label"))


def parse_name(raw: str, usage: str, what: str = "name") -> str:
    """Validate a plain name (no paths, no spaces, lower case)."""
    if not NAME_RE.match(raw) or ".." in raw:
        raise UserError(f"`{raw[:80]}` is not a valid {what} (lower-case letters, digits, "
                        "- _ . ; at most 63 characters)", usage)
    return raw


def parse_proposer(raw: str, usage: str) -> str:
    """proposer=openai:NAME: the OpenAI-compatible model that proposes instruction rewrites."""
    if not raw.startswith("openai:") or len(raw) > 200 or not raw[7:].strip() or ".." in raw:
        raise UserError(f"proposer must be openai:NAME, an OpenAI-compatible model "
                        f"(got {raw[:40]})", usage)
    return raw


def _tokens(text: str) -> list[str]:
    # Slack turns quotes into curly ones; accept both.
    text = text.replace("“", '"').replace("”", '"').replace("‘", "'").replace("’", "'")
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UserError(f"could not read the command: {exc}") from None


def parse(text: str, family: str | None = None) -> Command:
    """Parse command text (`/prompt test …`, `prompt test …`, or text after a slash command)."""
    if len(text) > MAX_TEXT:
        raise UserError(f"the command is too long ({len(text)} characters; at most {MAX_TEXT})")
    toks = _tokens(text.strip())
    if toks and toks[0].lstrip("/") in FAMILIES and (family is None or family == "tunebot"):
        family = toks.pop(0).lstrip("/")
        if family == "tunebot" and toks and toks[0] in FAMILIES[:-1]:
            family = toks.pop(0)
    if family is None:
        raise UserError("start with one of: " + ", ".join(f"/{f}" for f in FAMILIES),
                        "/tunebot help")
    if family == "compare":
        action = "vs" if "vs" in toks else "fair" if "fair" in toks else "name"
    elif family == "watch" and toks and toks[0].lower() not in WATCH_ACTIONS:
        action = "set"  # /watch REF on DATASET every=…
    else:
        if not toks:
            raise UserError(f"/{family} needs a subcommand", usage_for(family))
        action = toks.pop(0).lower()
    spec = SPECS.get((family, action))
    if spec is None:
        raise UserError(f"unknown subcommand `{action[:40]}` for /{family}", usage_for(family))
    if family == "watch" and action in WATCH_ACTIONS and "on" in (t.lower() for t in toks):
        raise UserError(f"`{action}` is a /watch subcommand, not a prompt name; to watch a "
                        f"prompt named {action}, write {action}:production or {action}@1",
                        usage_for(family))
    return _match(family, action, spec, toks, text)


def _match(family: str, action: str, spec: Spec, toks: list[str], text: str) -> Command:
    usage = spec.usage
    positional: list[str] = []
    params: dict[str, Any] = {}
    flags: set[str] = set()
    for tok in toks:
        key, eq, value = tok.partition("=")
        if eq and KEY_RE.match(key):
            if key in params:
                raise UserError(f"{key} is given twice", usage)
            if key in spec.params:
                params[key] = spec.params[key].convert(key, value, usage)
            elif spec.any_params:
                params[key] = value
            else:
                allowed = ", ".join(spec.params) or "none"
                raise UserError(f"unknown option {key} (allowed: {allowed})", usage)
        elif tok in spec.flags:
            flags.add(tok)
        else:
            positional.append(tok)
    args: dict[str, Any] = {}
    pattern = list(spec.pattern)
    i = 0
    for part in pattern:
        if part.endswith("*"):
            args[part[:-1].lower()] = " ".join(positional[i:])
            i = len(positional)
            continue
        if i >= len(positional):
            raise UserError(f"missing {part if part.isupper() else repr(part)}", usage)
        tok = positional[i]
        i += 1
        if part.islower():
            if tok.lower() != part:
                raise UserError(f"expected `{part}` but got `{tok[:40]}`", usage)
            continue
        args[part.lower()] = _capture(part, tok, usage)
    if i < len(positional):
        raise UserError(f"unexpected `{positional[i][:40]}`", usage)
    return Command(family, action, args, params, frozenset(flags), text)


def _capture(part: str, tok: str, usage: str) -> Any:
    if part in ("REF", "REF2"):
        return parse_ref(tok, usage)
    if part in ("NAME", "DATASET"):
        if part == "NAME" and usage.startswith("/model ") and tok.startswith("ft:"):
            tok = tok[3:]  # /model show ft:NAME names the model as everywhere else
        return parse_name(tok, usage, "dataset name" if part == "DATASET" else "name")
    if part == "LABEL":
        if not LABEL_RE.match(tok):
            raise UserError(f"`{tok[:40]}` is not a valid label", usage)
        return tok
    if part == "ID":
        num = tok.lstrip("#")
        if not num.isdigit() or len(num) > 12:
            raise UserError(f"`{tok[:40]}` is not a watch number (see /watch list)", usage)
        return int(num)
    if part == "JOB":
        num = tok.lstrip("#")
        if not num.isdigit() or len(num) > 12:
            raise UserError(f"`{tok[:40]}` is not a job number", usage)
        return int(num)
    if part == "M":
        if len(tok) > 200 or ".." in tok:
            raise UserError(f"`{tok[:40]}` is not a valid model reference", usage)
        return tok
    return tok
