"""App Home: the catalog with production versions, owners and last scores, jobs, models and
comparisons; published when opened, paged beyond 20 prompts, refreshed when a job ends."""

from __future__ import annotations

import json
from pathlib import Path

from devtools.seed import CONTENT
from devtools.slack_api.payloads import app_home_opened_event, block_actions_body, event_body
from tests.bot.conftest import Stack, running_stack
from tests.bot.test_session import job_id_of, seed, strings, thread_of
from tunebot import catalog, registry
from tunebot.db import session_scope


def home_text(stack: Stack, user: str) -> str:
    view = stack.slack.home_views.get(user)
    assert view is not None, f"no Home tab published for {user}"
    return "\n".join(strings(view["blocks"]))


def open_home(stack: Stack, user: str) -> str:
    before = len(stack.slack.calls_for("views.publish"))
    event = app_home_opened_event(user)
    assert stack.post(event_body(event)).status_code == 200
    stack.slack.wait_for(lambda: len(stack.slack.calls_for("views.publish")) > before or None,
                         timeout=15)
    return home_text(stack, user)


def test_home_tab_shows_catalog_jobs_models_and_pages(tmp_path: Path, start_worker,
                                                      redis_url: str,
                                                      tiny_model_dir: Path) -> None:
    # The production gate is off here: tests/tunebot/test_promotion_gate.py covers it.
    with running_stack(tmp_path, start_worker, redis_url, protected_labels=[]) as stack:
        seed(stack, tmp_path)
        with session_scope(stack.core.engine) as s:
            for i in range(24):  # 25 prompts: two pages
                catalog.save_version(session=s, team_id="T0TEAM", name=f"extra-{i:02d}",
                                     content=CONTENT, author="U0CAROL", message="v1")
        # Another workspace's prompt never shows.
        with session_scope(stack.core.engine) as s:
            catalog.save_version(session=s, team_id="T0OTHER", name="secret-prompt",
                                 content=CONTENT, author="U0EVE", message="v1")
        stack.slash("label colours@2 production", command="/prompt")
        registry.register(engine=stack.core.engine, team_id="T0TEAM", name="colours",
                          created_by="U0ALICE", base_model=str(tiny_model_dir),
                          adapter_path=str(tmp_path / "no-adapter"), template="full",
                          prompt_ref="colours@2", metrics={})
        stack.slash("label colours@1 staging", command="/model", user_id="U0ADMIN")

        home = open_home(stack, "U0BOB")
        assert "Prompt catalog* — 25 prompt(s), page 1 of 2" in home
        assert "*colours* · production v2 · owner <@U0ALICE>" in home
        assert "guidelines 0 ✗" in home and "(/prompt lint colours)" in home
        assert "not tested yet" in home and "secret-prompt" not in home
        assert home.count("owner <@") == 20
        assert "*ft:colours@1* · staging · base" in home and "not scored yet" in home

        # Next page: the remaining five prompts.
        view = stack.slack.home_views["U0BOB"]
        before = len(stack.slack.calls_for("views.publish"))
        nxt = stack.post(block_actions_body("home_page_next", "1", user_id="U0BOB", view=view))
        assert nxt.status_code == 200
        stack.slack.wait_for(lambda: len(stack.slack.calls_for("views.publish")) > before
                             or None, timeout=15)
        page2 = home_text(stack, "U0BOB")
        assert "page 2 of 2" in page2 and page2.count("owner <@") == 5
        assert "Previous" in page2

        # A prompt test ends → the requester's Home tab is republished with its score.
        jid = job_id_of(stack.slash(f"test colours on colours-eval model={tiny_model_dir}",
                                    command="/prompt").json())
        thread_of(stack, jid)
        stack.slack.wait_for(lambda: "last test" in home_text_or_empty(stack, "U0ALICE")
                             or None, timeout=20)
        alice = home_text(stack, "U0ALICE")
        assert f"job #{jid}" in alice and "on colours-eval" in alice
        assert f"#{jid} · succeeded" in alice
        # The published view is valid Block Kit as the local server checked it; no user text
        # can break out of it.
        assert json.dumps(stack.slack.home_views["U0ALICE"]).count("<!channel>") == 0


def home_text_or_empty(stack: Stack, user: str) -> str:
    return home_text(stack, user) if user in stack.slack.home_views else ""
