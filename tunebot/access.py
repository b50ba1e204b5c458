"""Who may do what: each command's declared policy (its Spec), checked in this one place, and
the owner-or-admin rule for things people own (prompts, datasets, jobs)."""

from __future__ import annotations

from tunebot.commands import SPECS
from tunebot.core import Actor
from tunebot.errors import Forbidden
from tunebot.settings import Settings


def policy_of(family: str, action: str) -> str:
    """The declared policy of /family action: "anyone", "admin" or "finetune"."""
    spec = SPECS.get((family, action))
    return spec.policy if spec is not None else "anyone"


def needs_usergroups(family: str, action: str, actor: Actor, settings: Settings) -> bool:
    """Whether deciding this command needs the actor's usergroups (fine-tune allow-list)."""
    allowed = settings.finetune_allowed
    return bool(allowed) and policy_of(family, action) == "finetune" \
        and actor.user_id not in allowed and not actor.is_admin


def check_policy(family: str, action: str, actor: Actor, settings: Settings) -> None:
    """Raise Forbidden unless the actor may run /family action (commands and buttons alike)."""
    policy = policy_of(family, action)
    if policy == "admin" and not actor.is_admin:
        raise Forbidden(f"/{family} {action} is for admins of this workspace "
                        "(TUNEBOT_ADMINS)")
    if policy == "finetune" and settings.finetune_allowed and not actor.is_admin:
        allowed = set(settings.finetune_allowed)
        if actor.user_id not in allowed and not (actor.usergroups & allowed):
            raise Forbidden("fine-tuning is limited to the people in TUNEBOT_FINETUNE_ALLOWED; "
                            "ask an admin")


def require_owner_or_admin(owner: str, actor: Actor, what: str) -> None:
    """Raise Forbidden unless the actor owns the thing or is an admin."""
    if actor.user_id != owner and not actor.is_admin:
        raise Forbidden(f"only {what}'s owner ({owner}) or an admin may do that")
