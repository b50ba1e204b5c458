"""App Home: the workspace's catalog, running and recent jobs, models and comparisons.

`home_view` reads SQL and returns a Block Kit home view (pure apart from the reads); the bot
publishes it when a user opens the tab, pages through it, or when one of their jobs ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from sqlalchemy.engine import Engine

from bot import limits
from bot.blocks import escape
from tunebot import catalog, jobs, registry
from tunebot.catalog import guidelines
from tunebot.db import session_scope
from tunebot.handlers.common import delivery_text
from tunebot.models import Job

log = logging.getLogger(__name__)
PAGE = 20  # catalog entries per page
RECENT_JOBS = 10
SCAN_JOBS = 500  # how far back scores are looked for
HOME_PAGE = "home_page"


@dataclass
class Score:
    """A measured accuracy and where it came from."""

    accuracy: float
    dataset: str
    when: str
    job_id: int


def _when(job: Job) -> str:
    at = job.finished_at or job.created_at
    return at.strftime("%Y-%m-%d") if at else ""


def _scores(engine: Engine, team_id: str) -> tuple[dict[str, Score], dict[str, Score],
                                                    list[Job], list[Job]]:
    """(last test per prompt, best score per model, recent jobs, recent comparisons)."""
    rows = jobs.list_jobs(engine=engine, team_id=team_id, limit=SCAN_JOBS)
    last_test: dict[str, Score] = {}
    best_model: dict[str, Score] = {}

    def model_score(model: str, s: Score) -> None:
        if model.startswith("ft:") and (model not in best_model
                                        or s.accuracy > best_model[model].accuracy):
            best_model[model] = s

    for job in rows:
        if job.status != "succeeded" or not job.result:
            continue
        p, r = job.params or {}, job.result
        if job.kind in ("prompt_test", "prompt_compare", "model_compare"):
            for cand, summ in zip(p.get("candidates", []), r.get("summaries", []), strict=False):
                s = Score(float(summ.get("accuracy", 0.0)), p.get("dataset", ""), _when(job),
                          job.id or 0)
                if cand.get("adapter"):  # the production gate's pairing of two adapters
                    model_score(str(cand["adapter"]), s)
                    continue
                last_test.setdefault(cand["name"], s)  # newest first: the first one is last
                model_score(str(p.get("model", "")), s)
        elif job.kind == "compare":
            for summ in r.get("candidates", []):
                if summ.get("kind") in ("tuned", "hybrid"):
                    model_score(str(p.get("model", "")), Score(
                        float(summ.get("accuracy", 0.0)), p.get("dataset", ""), _when(job),
                        job.id or 0))
    comparisons = [j for j in rows if j.kind == "compare" and j.status == "succeeded"][:5]
    return last_test, best_model, rows[:RECENT_JOBS], comparisons


def _md(text: str) -> dict[str, Any]:
    return limits.section(text)


def home_view(engine: Engine, team_id: str, page: int = 0) -> dict[str, Any]:
    """The Home tab of a workspace, its catalog at `page` (0-based)."""
    with session_scope(engine) as session:
        prompts = catalog.list_prompts(session=session, team_id=team_id)
        pages = max(1, -(-len(prompts) // PAGE))
        page = min(max(page, 0), pages - 1)
        rules = guidelines.team_rules(session=session, team_id=team_id)
        compliance = {}
        for entry in prompts[page * PAGE:(page + 1) * PAGE]:
            shown = entry.labels.get("production")
            row = (catalog.get_version(session=session, prompt=entry.prompt, version=shown)
                   if shown else entry.latest)
            if row is not None:
                compliance[entry.prompt.name] = guidelines.check(row.content, rules)
        session.expunge_all()
    last_test, best_model, recent, comparisons = _scores(engine, team_id)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": limits.plain("tunebot", limits.HEADER_TEXT)},
        _md(f"*Prompt catalog* — {len(prompts)} prompt(s)"
            + (f", page {page + 1} of {pages}" if pages > 1 else "")),
    ]
    for entry in prompts[page * PAGE:(page + 1) * PAGE]:
        name = entry.prompt.name
        prod = entry.labels.get("production")
        version = (f"production v{prod}" if prod else
                   f"latest v{entry.latest.version} (no production)" if entry.latest else
                   "no versions")
        s = last_test.get(name)
        score = (f"last test {s.accuracy:.1%} on {escape(s.dataset)} ({s.when}, job #{s.job_id})"
                 if s else "not tested yet")
        found = compliance.get(name)
        errs = len(guidelines.errors(found or []))
        rules_line = ("" if found is None else " · guidelines ✓" if not found else
                      f" · guidelines {errs} ✗ {len(found) - errs} ⚠ (/prompt lint {name})")
        blocks.append(_md(f"*{escape(name)}* · {version} · owner <@{escape(entry.prompt.owner)}>"
                          f"\n{score}{escape(rules_line)}"))
    if not prompts:
        blocks.append(_md("No prompts yet: `/prompt new` opens the form, and "
                          f"`TUNEBOT_CLI_TEAM={escape(team_id)} tunebot catalog import prompts/` "
                          "loads a catalog."))
    nav = []
    if page > 0:
        nav.append(limits.button(f"{HOME_PAGE}_prev", "◂ Previous", str(page - 1)))
    if page < pages - 1:
        nav.append(limits.button(f"{HOME_PAGE}_next", "Next ▸", str(page + 1)))
    blocks += limits.actions(nav, block_id="home_nav")

    blocks += [{"type": "divider"}, _md("*Running and recent jobs*")]
    blocks.append(_md("\n".join(
        f"#{j.id} · {j.status}" + (f" {int(100 * j.progress)}%" if j.status == "running" else "")
        + f" · {escape((j.title or j.kind)[:80])}"
        + (f" · :warning: {escape(delivery_text(j)[:200])}" if delivery_text(j) else "")
        for j in recent) or "No jobs yet."))

    models = registry.list_models(engine=engine, team_id=team_id)
    blocks += [{"type": "divider"}, _md(f"*Models* — {len(models)} version(s)")]
    lines = []
    labelled = {name: registry.model_labels(engine=engine, team_id=team_id, name=name)
                for name in {m.name for m in models[:PAGE]}}
    for m in models[:PAGE]:
        ref = f"ft:{m.name}@{m.version}"
        tags = "".join(f" · {escape(lab)}" for lab, v in labelled[m.name].items()
                       if v == m.version)
        best = max((s for key, s in best_model.items()
                    if key in (ref, f"ft:{m.name}") or key.startswith(f"ft:{m.name}:")),
                   key=lambda s: s.accuracy, default=None)
        score = (f"best {best.accuracy:.1%} on {escape(best.dataset)} (job #{best.job_id})"
                 if best else "not scored yet")
        lines.append(f"*{escape(ref)}*{tags} · base {escape(m.base_model[-40:])} · prompt "
                     f"{escape(m.prompt_ref or '—')} · {score}")
    blocks.append(_md("\n".join(lines) or "No fine-tuned models yet."))

    if comparisons:
        blocks += [{"type": "divider"}, _md("*Comparisons*")]
        for j in comparisons:
            blocks.append(_md(f"#{j.id} · {escape((j.title or '')[:80])}\n"
                              f"{escape(str((j.result or {}).get('recommendation', '')))}"))
    return {"type": "home", "blocks": limits.fit(blocks, limits.VIEW_BLOCKS)}


def publish_home(client: WebClient, engine: Engine, team_id: str, user_id: str,
                 page: int = 0) -> None:
    """Publish the Home tab for one user."""
    client.views_publish(user_id=user_id, view=home_view(engine, team_id, page))


def refresh_home_quietly(client: WebClient, engine: Engine, team_id: str, user_id: str) -> None:
    """Refresh after a job ended; a failure here never blocks the job's messages."""
    try:
        publish_home(client, engine, team_id, user_id)
    except Exception as exc:
        log.warning("home refresh for %s failed: %s", user_id, exc)
