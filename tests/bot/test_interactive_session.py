"""The interactive Slack story in one session: a prompt created and edited through the form,
its eval set shared as a file, tests run (and re-run from a button), the winner promoted with
its button, and all of it on App Home."""

from __future__ import annotations

from pathlib import Path

from devtools.seed import ROWS
from tests.bot.conftest import running_stack
from tests.bot.test_buttons import buttons, click, final_message, told
from tests.bot.test_files import THREAD, answer_in, jsonl, share
from tests.bot.test_home import open_home
from tests.bot.test_modals import open_form, submit
from tests.bot.test_session import CHANNEL, job_id_of, thread_of
from tunebot import jobs


def test_form_file_buttons_and_home(tmp_path: Path, start_worker, redis_url: str,
                                    tiny_model_dir: Path) -> None:
    with running_stack(tmp_path, start_worker, redis_url, protected_labels=[],
                       slack_file_hosts=["127.0.0.1"]) as stack:
        form = {
            "name": "colours",
            "messages": '- role: system\n  content: Classify the colour as warm or cool.\n'
                        '- role: user\n  content: "colour: {{ colour }}"\n',
            "variables": "colour: a colour name", "format": "choice", "choices": "warm, cool",
            "model": str(tiny_model_dir), "temperature": "0", "max_new_tokens": "4",
            "tone": "", "context": "Demo prompt.", "task": "One word.", "limitations": "",
            "message": "first version"}
        assert submit(stack, open_form(stack, "new"), form) == {}
        edited = {k: v for k, v in form.items() if k != "name"}
        edited["messages"] = edited["messages"].replace('"colour: {{ colour }}"',
                                                        '"Colour: {{ colour }}\\nAnswer:"')
        assert submit(stack, open_form(stack, "edit colours"),
                      dict(edited, message="ask for the answer explicitly")) == {}

        n = len(stack.slack.thread(CHANNEL, THREAD))
        share(stack, "colours-eval.jsonl", jsonl(ROWS), "dataset add colours-eval")
        assert "Added colours-eval v1: 24 rows." in answer_in(stack, THREAD, n)

        # Test each version; the first one is re-run from its button.
        scores = {}
        for version in (1, 2):
            jid = job_id_of(stack.slash(f"test colours@{version} on colours-eval",
                                        command="/prompt").json())
            final = final_message(stack, jid)
            scores[version] = (jobs.get(engine=stack.core.engine, job_id=jid).result["summaries"][0]
                               ["accuracy"], final)
        before = len(stack.slack.ephemerals(CHANNEL, "U0ALICE"))
        click(stack, scores[1][1], "job_rerun")
        rerun = job_id_of({"text": told(stack, "U0ALICE", before)})
        root, _ = thread_of(stack, rerun)
        assert "succeeded" in root["text"]
        again = jobs.get(engine=stack.core.engine, job_id=rerun).result["summaries"][0]["accuracy"]
        assert again == scores[1][0]  # greedy: the same answers again

        # Promote the winner (ties go to the newer version) with its button.
        winner = 2 if scores[2][0] >= scores[1][0] else 1
        before = len(stack.slack.ephemerals(CHANNEL, "U0ALICE"))
        assert "prompt_promote" in buttons(scores[winner][1])
        click(stack, scores[winner][1], "prompt_promote")
        assert f"colours:production → v{winner}" in told(stack, "U0ALICE", before)

        home = open_home(stack, "U0ALICE")
        assert f"*colours* · production v{winner} · owner <@U0ALICE>" in home
        assert "last test" in home and "on colours-eval" in home
        assert f"#{rerun} · succeeded" in home
