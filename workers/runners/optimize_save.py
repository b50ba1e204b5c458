"""The optimiser's winner as a catalog version: the start's fields and docs kept and added to
(what changed, the measured gain), authored `tunebot optimize`, labelled `candidate`."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy.exc import IntegrityError

from tunebot import catalog, stats
from tunebot.catalog import guidelines
from tunebot.commands import Ref
from tunebot.db import session_scope
from tunebot.errors import JobError, UserError
from workers.context import JobContext
from workers.optimize.space import Candidate
from workers.optimize.split import RESERVED, Split

AUTHOR = "tunebot optimize"
LABEL = "candidate"
MIN_EXAMPLES = 4


def winner_docs(start: dict[str, Any], cand: Candidate, *, job_id: int, start_name: str,
                model: str, dataset: str, split: Split, s_start: dict[str, Any],
                s_win: dict[str, Any], res: stats.PairedResult) -> dict[str, Any]:
    """The start's docs with what the optimiser changed and what it measured."""
    docs = copy.deepcopy(start.get("docs") or {})
    what = cand.describe()
    gain = (f"Measured with {model} (greedy) on the {len(split.heldout)} "
            f"held-out cases of {dataset}: {s_win['accuracy']:.1%} (95% CI "
            f"{stats.format_ci(*s_win['ci'])}) against {s_start['accuracy']:.1%} for "
            f"{start_name}; paired: {res.diff_pts:+.1f} pts, McNemar p={res.p_value:.3g}, "
            f"{res.c} cases fixed, {res.b} broken.")
    docs["context"] = (str(docs.get("context") or "").strip() + "\n\nOptimised by /prompt "
                       f"optimize (job #{job_id}) from {start_name} for {model}: {what}. "
                       f"Selected on {split.note}.").strip()
    examples = list(docs.get("examples") or [])
    for row in cand.demos:  # its demonstrations document it too, up to MIN_EXAMPLES in all
        if len(examples) >= MIN_EXAMPLES:
            break
        example = {"input": {k: v for k, v in row.items() if k not in RESERVED},
                   "output": row.get("expected")}
        if example not in examples:
            examples.append(example)
    if examples:
        docs["examples"] = examples
    before = str(docs.get("limitations") or "").strip()
    docs["limitations"] = gain + (f" Notes on {start_name}: {before}" if before else "")
    return docs


def save_winner(ctx: JobContext, p: dict[str, Any], cand: Candidate, start: dict[str, Any],
                start_name: str, split: Split, s_start: dict[str, Any], s_win: dict[str, Any],
                res: stats.PairedResult) -> dict[str, Any]:
    """Save the winner as a new version of the start's prompt and label it `candidate`."""
    name = p["prompt"]["name"]
    content = copy.deepcopy(cand.content)
    content["docs"] = winner_docs(start, cand, job_id=ctx.job_id, start_name=start_name,
                                  model=p["model"], dataset=p["dataset"], split=split,
                                  s_start=s_start, s_win=s_win, res=res)
    content["model"] = p["model"] if not str(p["model"]).startswith("/") else start.get("model")
    message = (f"tunebot optimize (job #{ctx.job_id}) from {start_name}: {cand.describe()}; "
               f"held-out {s_win['accuracy']:.1%} vs {s_start['accuracy']:.1%} "
               f"(p={res.p_value:.3g})")[:500]
    try:
        with session_scope(ctx.engine) as session:
            v, created = catalog.save_version(
                session=session, team_id=ctx.job.team_id, name=name, content=content,
                author=AUTHOR, message=message, mode="edit")
            number, vid = v.version, v.id
    except (UserError, IntegrityError, ValueError) as exc:
        raise JobError(f"the winner could not be saved as a version of {name}: {exc}") from None
    line = (f"Saved {name}@{number}" if created else
            f"The winner is identical to {name}@{number}, already saved")
    protected = tuple(ctx.settings.protected_labels)
    if LABEL in protected:
        line += f"; not labelled `{LABEL}` (a protected label here)."
    else:
        with session_scope(ctx.engine) as session:
            catalog.set_label(session=session, team_id=ctx.job.team_id,
                              ref=Ref(name, number), label=LABEL, user=AUTHOR,
                              reason=f"/prompt optimize job #{ctx.job_id}: "
                                     f"{res.diff_pts:+.1f} pts vs {start_name}",
                              evidence={"job": ctx.job_id})
        line += f", labelled `{LABEL}` (not production)."
    with session_scope(ctx.engine) as session:
        found = guidelines.check(content, guidelines.team_rules(session=session,
                                                                team_id=ctx.job.team_id))
    if found:
        line += f" Guidelines: {len(found)} warning(s) — /prompt lint {name}@{number}."
    ctx.say(line + f" Promote it with /prompt label {name}@{number} production (the "
            "production gate decides).")
    return {"name": name, "version": number, "version_id": vid, "ref": f"{name}@{number}",
            "created": created}
