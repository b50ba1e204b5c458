"""/prompt list · show · history · diff · label · render · delete · new · edit · test · compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError

from tunebot import catalog, datasets, registry
from tunebot.catalog import guidelines
from tunebot.catalog.files import read_version_file
from tunebot.catalog.templates import render_messages
from tunebot.commands import Command, Ref
from tunebot.core import Actor, Core, Outcome
from tunebot.db import session_scope
from tunebot.errors import NotFound, UserError
from tunebot.handlers.common import Routes, check_model, pin, submit_job
from tunebot.modelref import parse_model_ref
from tunebot.models import PromptVersion
from tunebot.replies import Reply, code, context, fields, section, table

ROUTES = Routes()

MAX_BLOCK = 2800  # Slack caps a text block at 3,000 characters


def clip(text: str, limit: int = MAX_BLOCK) -> str:
    """Text cut to fit one block, saying how much was left out."""
    if len(text) <= limit:
        return text
    return text[: limit - 40] + f"\n… ({len(text) - limit + 40:,} more characters)"


def _one_line(text: str, limit: int = 60) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def messages_text(content: dict[str, Any]) -> str:
    """A version's messages (or template) as plain text, one `[role]` header per message."""
    if content.get("messages"):
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in content["messages"])
    return content.get("template") or ""


def params_text(content: dict[str, Any]) -> str:
    """Generation parameters as `k=v · k=v`."""
    params = content.get("params") or {}
    return " · ".join(f"{k}={json.dumps(v) if isinstance(v, list) else v}"
                      for k, v in params.items()) or "runner defaults"


def output_text(content: dict[str, Any]) -> str:
    """The expected output format in words."""
    out = content.get("output") or {}
    fmt = out.get("format", "text")
    if fmt == "choice":
        return "one of: " + " | ".join(out.get("choices", []))
    if fmt == "json":
        return "JSON" + (" (with a schema)" if out.get("schema") else "")
    return "free text"


def _labels_text(labels: dict[str, int], version: int | None = None) -> str:
    if not labels:
        return "none"
    return ", ".join(f"{k}→v{v}" + (" ✓" if v == version else "") for k, v in labels.items())


def _usage_file(cmd: Command) -> UserError:
    return UserError(f"/prompt {cmd.action} needs a YAML file: attach one in Slack, or run "
                     f'`tunebot run "{cmd.text.strip() or "/prompt " + cmd.action}" '
                     "--file prompt.yaml` (or use the form in Slack)", cmd.spec.usage)


@ROUTES("prompt", "list")
def list_(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Prompts of the workspace, optionally filtered by a search query."""
    query = cmd.args.get("query", "")
    with session_scope(app.engine) as session:
        found = catalog.list_prompts(session=session, team_id=actor.team_id, query=query)
    if not found:
        text = (f"No prompt matches `{query}`." if query else
                "No prompts yet. Add one with /prompt new, or load a catalog into this "
                f"workspace: `TUNEBOT_CLI_TEAM={actor.team_id} tunebot catalog import prompts/` "
                "(with only SLACK_BOT_TOKEN set, the CLI acts on the bot's workspace by itself).")
        return Outcome(Reply(text=text, blocks=[section(text)]))
    rows = [[s.prompt.name, f"v{s.latest.version}" if s.latest else "—",
             _labels_text(s.labels), ", ".join(s.prompt.tags or []),
             _one_line(s.prompt.description, 50)] for s in found]
    head = f"{len(found)} prompt{'s' if len(found) != 1 else ''}" + (
        f" matching `{query}`" if query else "")
    return Outcome(Reply(text=head, blocks=[
        section(head), table(["name", "latest", "labels", "tags", "description"], rows),
        context("/prompt show NAME · /prompt history NAME")]))


def _dataset_line(app: Core, team_id: str, name: str) -> str:
    try:
        ds = datasets.get_dataset(engine=app.engine, team_id=team_id, name=name)
    except NotFound:
        return f"{name} (not in the catalog)"
    return f"{name} (v{ds.version}, {ds.row_count} rows)"


@ROUTES("prompt", "lint")
def lint(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """A version against the team's guidelines: each finding with its field and a fix."""
    ref: Ref = cmd.args["ref"]
    with session_scope(app.engine) as session:
        v = catalog.resolve(session=session, team_id=actor.team_id, ref=ref)
        rules = guidelines.team_rules(session=session, team_id=actor.team_id)
    found = guidelines.check(v.content, rules)
    title = f"{ref.name}@{v.version}"
    if not found:
        text = f"{title} follows every guideline ({len(rules)} rules)."
        return Outcome(Reply(text=text, blocks=[section(text)]))
    n_err = len(guidelines.errors(found))
    head = (f"{title}: {n_err} error(s), {len(found) - n_err} warning(s) under the team's "
            "guidelines")
    body = "\n".join(f.line() for f in found)
    return Outcome(Reply(text=f"{head}\n{body}", blocks=[section(head), section(clip(body))]))


@ROUTES("prompt", "show")
def show(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """A version: messages, variables, parameters, output format, docs, labels and datasets."""
    ref: Ref = cmd.args["ref"]
    with session_scope(app.engine) as session:
        v = catalog.resolve(session=session, team_id=actor.team_id, ref=ref)
        prompt = catalog.get_prompt(session=session, team_id=actor.team_id, name=ref.name)
        latest = catalog.latest_version(session=session, prompt=prompt)
        labels = catalog.labels_of(session=session, team_id=actor.team_id, name=ref.name)
    c = v.content
    title = f"{prompt.name}@{v.version}"
    here = [k for k, n in labels.items() if n == v.version]
    head = f"*{title}*" + (f" ({', '.join(here)})" if here else "") + (
        f" — {prompt.description}" if prompt.description else "")
    pairs = [("version", f"v{v.version} of {latest.version if latest else v.version}"),
             ("labels", _labels_text(labels, v.version)), ("owner", prompt.owner),
             ("author", v.author), ("saved", v.created_at.strftime("%Y-%m-%d %H:%M")),
             ("change", v.message or "—"), ("model", c.get("model") or "default"),
             ("params", params_text(c)), ("output", output_text(c))]
    if c.get("tone"):
        pairs.append(("tone", c["tone"]))
    for role, name in (prompt.datasets or {}).items():
        pairs.append((f"{role} set", _dataset_line(app, actor.team_id, name)))
    if prompt.tags:
        pairs.append(("tags", ", ".join(prompt.tags)))
    blocks = [section(head), fields(pairs), code(clip(messages_text(c)))]
    variables = c.get("variables") or {}
    if variables:
        blocks.append(table(["variable", "description"], [[k, d] for k, d in variables.items()]))
    docs = c.get("docs") or {}
    for key, label in (("context", "Context"), ("task", "Task"), ("limitations", "Limitations")):
        if docs.get(key):
            blocks.append(section(clip(f"*{label}:* {docs[key].strip()}")))
    examples = docs.get("examples") or []
    if examples:
        rows = [[_one_line(json.dumps(e.get("input", {}), ensure_ascii=False), 70),
                 _one_line(e.get("output") if isinstance(e.get("output"), str)
                           else json.dumps(e.get("output"), ensure_ascii=False), 40)]
                for e in examples[:5]]
        blocks.append(table(["example input", "output"], rows))
    if c.get("scorers"):
        blocks.append(context("scorers: " + ", ".join(
            s if isinstance(s, str) else str(s.get("type", s)) for s in c["scorers"])))
    blocks.append(context(f"hash {v.content_hash[:12]} · /prompt render {title} "
                          + " ".join(f"{k}=…" for k in variables)))
    return Outcome(Reply(text=f"{title}: {prompt.description}".strip(": "), blocks=blocks))


@ROUTES("prompt", "history")
def history(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Every version of a prompt and every label move."""
    with session_scope(app.engine) as session:
        h = catalog.history(session=session, team_id=actor.team_id, name=cmd.args["name"])
        labels = catalog.labels_of(session=session, team_id=actor.team_id, name=h.prompt.name)
    by_version: dict[int, list[str]] = {}
    for label, n in labels.items():
        by_version.setdefault(n, []).append(label)
    rows = [[f"v{v.version}", v.author, v.created_at.strftime("%Y-%m-%d %H:%M"),
             _one_line(v.message or "—", 50), ", ".join(by_version.get(v.version, [])),
             v.content_hash[:8]] for v in reversed(h.versions)]
    blocks = [section(f"*{h.prompt.name}* — {len(h.versions)} versions, owner {h.prompt.owner}"),
              table(["version", "author", "saved", "change", "labels", "hash"], rows)]
    if h.moves:
        moves = [[m.moved_at.strftime("%Y-%m-%d %H:%M"), m.label,
                  f"v{m.from_version}" if m.from_version else "—",
                  f"v{m.to_version}" if m.to_version else "—", m.moved_by,
                  ("⚠ forced: " if m.forced else "") + _one_line(m.reason or "—", 90)
                  + (f" (job #{(m.evidence or {})['job']})" if (m.evidence or {}).get("job")
                     else "")]
                 for m in reversed(h.moves)]
        blocks.append(table(["when", "label", "from", "to", "by", "why"], moves))
    return Outcome(Reply(text=f"history of {h.prompt.name}", blocks=blocks))


def _resolve_named(session: Any, team_id: str, ref: Ref) -> tuple[PromptVersion, str]:
    v = catalog.resolve(session=session, team_id=team_id, ref=ref)
    return v, f"{ref.name}@{v.version}"


@ROUTES("prompt", "diff")
def diff(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """What changed between two versions: the text, then each changed field."""
    with session_scope(app.engine) as session:
        a, an = _resolve_named(session, actor.team_id, cmd.args["ref"])
        b, bn = _resolve_named(session, actor.team_id, cmd.args["ref2"])
    d = catalog.diff(a, b, a_name=an, b_name=bn)
    if d.same:
        text = f"{an} and {bn} are identical."
        return Outcome(Reply(text=text, blocks=[section(text)]))
    blocks = [section(f"*{an}* → *{bn}*" + (f" — {b.message}" if b.message else ""))]
    if d.text:
        blocks.append(code(clip(d.text)))
    else:
        blocks.append(context("messages unchanged"))
    if d.changes:
        blocks.append(table(["field", an, bn], [list(c) for c in d.changes]))
    return Outcome(Reply(text=f"diff {an} → {bn}", blocks=blocks))


@ROUTES("prompt", "render")
def render(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """A version's messages with the given variables filled in."""
    ref: Ref = cmd.args["ref"]
    with session_scope(app.engine) as session:
        v = catalog.resolve(session=session, team_id=actor.team_id, ref=ref)
    try:
        messages = render_messages(v.content, cmd.params)
    except UserError as exc:
        raise UserError(str(exc), cmd.spec.usage) from None
    body = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)
    title = f"{ref.name}@{v.version}"
    return Outcome(Reply(text=f"{title} rendered", blocks=[
        section(f"*{title}* rendered ({sum(len(m['content']) for m in messages):,} characters)"),
        code(clip(body))]))


@ROUTES("prompt", "delete")
def delete(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Soft-delete a prompt (its owner or an admin); versions and history are kept."""
    name = cmd.args["name"]
    with session_scope(app.engine) as session:
        catalog.delete(session=session, team_id=actor.team_id, name=name, actor=actor)
    text = (f"Deleted prompt {name}. Its versions and history are kept; saving a prompt "
            "with the same name brings it back.")
    return Outcome(Reply(text=text, blocks=[section(text)]))


def _save(cmd: Command, actor: Actor, app: Core, file: Path | None,
          mode: Literal["new", "edit"]) -> Outcome:
    if file is None:
        raise _usage_file(cmd)
    meta, fields_ = read_version_file(file)
    if mode == "new":
        name = meta.get("name")
        if not name:
            raise UserError("the file needs a `name:` for the new prompt", cmd.spec.usage)
    else:
        name = cmd.args["name"]
        if meta.get("name") not in (None, name):
            raise UserError(f"the file is for `{meta['name']}`, not `{name}`", cmd.spec.usage)
    try:
        with session_scope(app.engine) as session:
            v, created = catalog.save_version(
                session=session, team_id=actor.team_id, name=str(name), content=fields_,
                author=actor.user_id, message=str(fields_.get("message") or ""), mode=mode,
                description=meta.get("description"), tags=meta.get("tags"),
                datasets=meta.get("datasets"))
    except IntegrityError:
        raise UserError(f"someone saved {name} at the same moment; try again") from None
    if created:
        text = f"Saved {name}@{v.version}." + (
            "" if v.version > 1 else f" Label it with /prompt label {name}@1 production.")
    else:
        text = f"No change: the content is identical to {name}@{v.version}."
    blocks = [section(text)]
    with session_scope(app.engine) as session:
        warned = guidelines.check(v.content, guidelines.team_rules(session=session,
                                                                   team_id=actor.team_id))
    if warned:
        notes = "\n".join(f.line() for f in warned)
        text += f"\nGuidelines: {len(warned)} warning(s)\n{notes}"
        blocks.append(section(clip(f"Guidelines: {len(warned)} warning(s)\n{notes}")))
    blocks.append(context(f"/prompt show {name}@{v.version} · /prompt lint {name}@{v.version}"))
    return Outcome(Reply(text=text, blocks=blocks),
                   extra={"version": v.version, "created": created})


@ROUTES("prompt", "new")
def new(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Create a prompt from a YAML file holding its first version."""
    return _save(cmd, actor, app, file, "new")


@ROUTES("prompt", "edit")
def edit(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Save a new version of a prompt from a YAML file."""
    return _save(cmd, actor, app, file, "edit")


def _test_params(cmd: Command, app: Core, actor: Actor, refs: list[Ref]) -> dict[str, Any]:
    usage = cmd.spec.usage
    candidates = [pin(app, actor, ref) for ref in refs]
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id,
                              name=cmd.args["dataset"])
    if ds.row_count == 0:
        raise UserError(f"dataset {ds.name} has no rows", usage)
    model = check_model(app, actor, cmd.params.get("model") or candidates[0]["model"], usage)
    template, source = cmd.params.get("template"), "given"
    if template is None and model.startswith("ft:") and cmd.action == "test":
        # A tuned model is tested the way its adapter was trained, unless told otherwise
        # (a compare of two prompt versions renders both in full: that is what it compares).
        ref = parse_model_ref(model, usage=usage)
        template = registry.resolve_model(engine=app.engine, team_id=actor.team_id,
                                          name=ref.name, version=ref.version,
                                          label=ref.label).template
        source = "adapter"
    return {"candidates": candidates, "dataset": ds.name, "dataset_version": ds.version,
            "rows": ds.row_count, "model": model, "samples": cmd.params.get("samples", 1),
            "temperature": cmd.params.get("temperature"),
            "max_tokens": cmd.params.get("max_tokens"), "template": template,
            "template_source": source if template else None}


@ROUTES("prompt", "test")
def prompt_test(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Queue a prompt test of one version over an eval set."""
    params = _test_params(cmd, app, actor, [cmd.args["ref"]])
    c = params["candidates"][0]
    title = (f"🧪 {c['name']}@{c['version']} on {params['dataset']} "
             f"({params['rows']} cases) · {params['model']}")
    return submit_job(cmd, actor, app, kind="prompt_test", params=params, title=title)


@ROUTES("prompt", "compare")
def prompt_compare(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Queue a paired comparison of two versions on the same cases and model."""
    params = _test_params(cmd, app, actor, [cmd.args["ref"], cmd.args["ref2"]])
    a, b = params["candidates"]
    if a["version_id"] == b["version_id"]:
        raise UserError(f"both references resolve to {a['name']}@{a['version']}: "
                        "compare two different versions", cmd.spec.usage)
    title = (f"⚖️ {a['name']}@{a['version']} vs {b['name']}@{b['version']} on "
             f"{params['dataset']} · {params['model']}")
    return submit_job(cmd, actor, app, kind="prompt_compare", params=params, title=title)
