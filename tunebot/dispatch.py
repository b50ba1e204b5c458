"""From a parsed command to its outcome: the handler table, the policy check, and errors
turned into replies. Transport-neutral: Slack listeners, buttons and the CLI all come here."""

from __future__ import annotations

from pathlib import Path

from tunebot import jobs
from tunebot.access import check_policy
from tunebot.commands import Command, usage_for
from tunebot.core import Actor, Core, Outcome
from tunebot.errors import UserError
from tunebot.handlers import compare, dataset, finetune, labels, model, optimize, prompt, watch
from tunebot.handlers import tunebot as tunebot_family
from tunebot.handlers.common import Handler
from tunebot.replies import error

HANDLERS: dict[tuple[str, str], Handler] = {
    **prompt.ROUTES.table, **labels.ROUTES.table, **dataset.ROUTES.table,
    **finetune.ROUTES.table,
    **model.ROUTES.table, **compare.ROUTES.table, **tunebot_family.ROUTES.table,
    **watch.ROUTES.table, **optimize.ROUTES.table,
}


def execute(cmd: Command, actor: Actor, app: Core, file: Path | None = None) -> Outcome:
    """Run a command; user errors become error replies, never exceptions."""
    try:
        check_policy(cmd.family, cmd.action, actor, app.settings)
        fn = HANDLERS.get((cmd.family, cmd.action))
        if fn is None:
            raise UserError(f"/{cmd.family} {cmd.action} is not available yet",
                            usage_for(cmd.family))
        return fn(cmd, actor, app, file)
    except jobs.QuotaExceeded as exc:
        return Outcome(error(str(exc)))
    except UserError as exc:
        return Outcome(error(str(exc), exc.usage))
