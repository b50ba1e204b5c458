"""bot/limits.py keeps every Block Kit limit; bot/notifier.py sorts Slack's refusals."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.slack_response import SlackResponse

from bot import limits
from bot.blocks import reply_blocks
from bot.notifier import BACKOFF_CAP, backoff, classify
from devtools.slack_api import blockcheck
from tunebot.replies import Reply, actions, fields, section


def test_clip_keeps_the_limit_and_says_how_much_was_cut() -> None:
    assert limits.clip("short", 10) == "short"
    for n in (2001, 2500, 12_345, 1_000_000):
        out = limits.clip("y" * n, limits.FIELD_TEXT)
        assert len(out) <= limits.FIELD_TEXT and "more characters not shown" in out
        assert f"{n - out.index('…'):,}" in out  # the note counts exactly what is missing
    assert not limits.clip("&amp;" * 1000, 2000).split("…")[0].endswith(("&", "&a", "&am"))
    assert len(limits.clip("z" * 50, 10)) == 10  # too small for a note: a plain ellipsis


def test_a_reply_beyond_every_limit_passes_slacks_checks_with_nothing_silently_lost() -> None:
    pairs = [(f"k{i}", "v" * 2600) for i in range(23)]
    buttons = [{"action_id": f"b{i}", "text": "x" * 100, "value": str(i)} for i in range(30)]
    reply = Reply(text="t" * 50_000, blocks=[fields(pairs), section("s" * 9000),
                                             *[section(f"line {i}") for i in range(70)],
                                             actions(buttons)])
    blocks = reply_blocks(reply)
    assert blockcheck.problems(blocks) == []
    text = str(blocks)
    assert all(f"*k{i}*" in text for i in range(23))  # 23 fields: three sections
    assert "more block(s) not shown" in text and blocks[-1]["type"] == "actions"


@pytest.mark.parametrize(("status", "error", "headers", "kind"), [
    (200, "not_in_channel", {}, "permanent"),
    (200, "channel_not_found", {}, "permanent"),
    (200, "is_archived", {}, "permanent"),
    (200, "message_not_found", {}, "permanent"),
    (200, "invalid_auth", {}, "permanent"),
    (200, "account_inactive", {}, "permanent"),
    (200, "token_revoked", {}, "permanent"),
    (200, "missing_scope", {}, "permanent"),
    (200, "invalid_blocks", {}, "permanent"),
    (200, "msg_too_long", {}, "permanent"),
    (200, "internal_error", {}, "transient"),
    (200, "fatal_error", {}, "transient"),
    (200, "service_unavailable", {}, "transient"),
    (503, "", {}, "transient"),
    (200, "something_new", {}, "transient"),
    (429, "ratelimited", {"Retry-After": "17"}, "rate_limited"),
    (200, "ratelimited", {"retry-after": ["3"]}, "rate_limited"),
])
def test_slack_errors_are_sorted(status: int, error: str, headers: dict[str, Any],
                                 kind: str) -> None:
    resp = SlackResponse(client=None, http_verb="POST", api_url="x", req_args={},
                         data={"ok": False, "error": error} if error else {"ok": False},
                         headers=headers, status_code=status)
    got = classify(SlackApiError("refused", resp))
    assert got.kind == kind
    if kind == "rate_limited":
        assert got.retry_after == float(headers.get("Retry-After") or 3)
    assert classify(TimeoutError()).kind == classify(ConnectionResetError()).kind == "transient"


def test_backoff_doubles_up_to_its_cap_and_waits_out_retry_after() -> None:
    delays = [backoff(n) for n in range(1, 20)]
    assert delays[:4] == [2, 4, 8, 16] and max(delays) == BACKOFF_CAP
    assert delays == sorted(delays)
    resp = SlackResponse(client=None, http_verb="POST", api_url="x", req_args={},
                         data={"ok": False, "error": "ratelimited"},
                         headers={"Retry-After": "45"}, status_code=429)
    assert backoff(1, classify(SlackApiError("slow down", resp))) == 45
