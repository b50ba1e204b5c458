"""OAuth install states (issue 17, item 11): every unauthenticated GET /slack/install stored a
state row that only a completed install removed, so the table grew with each request. Through
the OAuth-configured HTTP bot, on SQLite and PostgreSQL: once states have expired, new install
requests clear them, a flood keeps at most MAX_STATES rows, and an install still completes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

import bot.oauth
from bot.oauth_tables import slack_oauth_states
from tests.bot.test_oauth import TOKEN, OAuthStack, oauth  # noqa: F401  (the OAuth bot fixture)
from tests.reliability.conftest import Report, size
from tunebot.models import utcnow


def _states(stack: OAuthStack, *, expired: bool = False) -> int:
    """State rows in the table (only those past their expire_at, with expired=True)."""
    query = select(func.count()).select_from(slack_oauth_states)
    if expired:
        now = utcnow().replace(tzinfo=None)
        query = query.where(slack_oauth_states.c.expire_at <= now)
    with stack.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _installs(stack: OAuthStack, n: int) -> list[int]:
    """n GET /slack/install at once, as anyone on the internet may send them."""
    with httpx.Client(base_url=stack.url, timeout=10) as client, ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: client.get("/slack/install").status_code, range(n)))


def _expire_all(stack: OAuthStack) -> None:
    """Ten minutes pass: every state issued so far is past its expire_at."""
    past = (utcnow() - timedelta(seconds=1)).replace(tzinfo=None)
    with stack.engine.begin() as conn:
        conn.execute(update(slack_oauth_states).values(expire_at=past))


def test_install_states_expire_and_stay_bounded(oauth: OAuthStack,  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch,
                                                report: Report) -> None:
    n = size(60, 600)
    backend = oauth.engine.dialect.name
    codes = _installs(oauth, n)
    first = _states(oauth)
    _expire_all(oauth)
    codes += _installs(oauth, n)
    after_expiry, leaked = _states(oauth), _states(oauth, expired=True)
    # A flood within the expiry time: the oldest unused states give way.
    cap = n // 2
    monkeypatch.setattr(bot.oauth, "MAX_STATES", cap, raising=False)
    codes += _installs(oauth, n)
    flooded = _states(oauth)
    # A real install still completes (its fresh state survives the pruning).
    done = oauth.install("T0BOUND", TOKEN, "code-bound")
    report.add("17.11 oauth states", f"expired install states, GET /slack/install ({backend})",
               n, held=n - leaked, lost=leaked,
               note=f"state rows: {first} after {n} GETs; {after_expiry} after {n} more once "
               f"those expired (kept all: {2 * n}); {flooded} after {n} more, cap {cap}")
    assert set(codes) == {302}, sorted(set(codes))
    assert first == n
    assert leaked == 0 and after_expiry <= n, f"{leaked} expired of {after_expiry} state rows"
    assert flooded <= cap + 8, f"{flooded} state rows over a cap of {cap}"
    assert done.status_code == 200, done.text
