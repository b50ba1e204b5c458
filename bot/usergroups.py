"""Who is in the usergroups named by TUNEBOT_FINETUNE_ALLOWED, via usergroups.users.list."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from tunebot.access import needs_usergroups
from tunebot.core import Actor
from tunebot.settings import Settings

log = logging.getLogger(__name__)
TTL_SECONDS = 300.0


def is_usergroup(entry: str) -> bool:
    """Slack usergroup ids start with S (user ids with U or W)."""
    return entry.startswith("S")


class UsergroupCache:
    """Members of each usergroup, per workspace, refreshed every TTL_SECONDS.

    A lookup failure denies (the group counts as empty) and is retried on the next request.
    """

    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = ttl
        self._members: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def members(self, client: WebClient, team_id: str, group: str) -> frozenset[str]:
        """The user ids in `group`."""
        key = (team_id, group)
        with self._lock:
            hit = self._members.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        try:
            users = frozenset(client.usergroups_users_list(usergroup=group).get("users") or [])
        except SlackApiError as exc:
            log.warning("usergroups.users.list %s failed: %s", group,
                        exc.response.get("error") if exc.response else exc)
            return frozenset()
        with self._lock:
            self._members[key] = (time.monotonic(), users)
        return users

    def groups_of(self, client: WebClient, team_id: str, user_id: str,
                  allowed: list[str]) -> frozenset[str]:
        """The usergroups among `allowed` that `user_id` belongs to."""
        return frozenset(g for g in allowed if is_usergroup(g)
                         and user_id in self.members(client, team_id, g))


GROUPS = UsergroupCache()


def with_usergroups(client: WebClient | None, actor: Actor, family: str, action: str,
                    settings: Settings) -> Actor:
    """The actor with their usergroups among TUNEBOT_FINETUNE_ALLOWED filled in, when the
    command's policy needs them (usergroups.users.list, cached) — for commands and buttons."""
    if client is None or not needs_usergroups(family, action, actor, settings):
        return actor
    groups = GROUPS.groups_of(client, actor.team_id, actor.user_id, settings.finetune_allowed)
    return dataclasses.replace(actor, usergroups=groups)
