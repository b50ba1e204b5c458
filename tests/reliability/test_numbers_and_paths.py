"""Numbers and local model paths (issue 17, items 9 and 13).

Non-finite numbers (nan, inf, 1e309, in any spelling) in any numeric option of any command are
refused when the command is read, with the usual usage line — never a queued job or an internal
error. A `model=` path is loaded only from under the configured roots (TUNEBOT_MODEL_DIRS,
symlinks resolved): a path outside them — existing or not, typed directly or reached through a
symlink — gets one and the same answer, which names no folder and no file outside the roots."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import make_settings
from tests.reliability.conftest import Report, size
from tests.reliability.inprocess import (
    job_count,
    job_outcome,
    job_thread,
    queued_job,
    run_queued,
    tunebot_cli,
)
from tunebot import migrate
from tunebot.settings import Settings

PROMPT = {"messages": [{"role": "user", "content": "Ticket: {{ ticket }}"}],
          "variables": {"ticket": "t"}}
NON_FINITE = ["nan", "NaN", "-nan", "+nan", "NAN", "inf", "-inf", "+inf", "Infinity",
              "-infinity", "iNf", "1e309", "-1e309", "1e999"]
COMMANDS = [
    "/tunebot ping seconds={v}",
    "/prompt test triage on eval temperature={v}",
    "/prompt compare triage@1 triage@2 on eval temperature={v}",
    "/compare triage vs smollm2 on eval traffic={v}",
    "/compare triage vs smollm2 on eval traffic={v}/day",
    "/finetune start smollm2 on train lr={v}",
    "/finetune estimate smollm2 on train lora_dropout={v}",
    "/finetune start smollm2 on train warmup_ratio={v}",
    "/finetune estimate smollm2 on train weight_decay={v}",
    "/finetune start smollm2 on train val_split={v}",
    "/dataset check train model=smollm2 epochs={v}",
]


def _catalog(tmp_path: Path, settings: Settings) -> None:
    folder = tmp_path / "catalog"
    (folder / "datasets").mkdir(parents=True)
    (folder / "triage.yaml").write_text(json.dumps({"name": "triage", "versions": [
        PROMPT, {**PROMPT, "tone": "terse"}]}))
    (folder / "datasets" / "eval.jsonl").write_text(
        "".join(json.dumps({"ticket": f"t{i}", "expected": "x"}) + "\n" for i in range(3)))
    (folder / "datasets" / "train.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}) + "\n"
        for i in range(12)))
    code, out = tunebot_cli(settings, "catalog", "import", str(folder))
    assert code == 0, out


def test_non_finite_numbers_are_refused_with_the_usage_line(tmp_path: Path,
                                                            report: Report) -> None:
    settings = make_settings(tmp_path, max_jobs_per_user=100_000)
    migrate.upgrade(settings.database_url)
    _catalog(tmp_path, settings)
    # Reduced: each command gets two spellings, in turn, so every spelling is tried somewhere.
    per = size(2, len(NON_FINITE))
    tried_texts = [template.format(v=NON_FINITE[(i * per + k) % len(NON_FINITE)])
                   for i, template in enumerate(COMMANDS) for k in range(per)]
    accepted, unclear = [], []
    for text in tried_texts:
        code, out = tunebot_cli(settings, "run", text)
        if code == 0:
            accepted.append((text, out.strip()[:100]))
        elif "Usage:" not in out or "internal error" in out:
            unclear.append((text, out.strip()[:160]))
    queued = job_count(settings)
    tried = len(tried_texts)
    report.add("17.9 non-finite numbers", "nan/inf/1e309 in every numeric option (CLI)", tried,
               held=tried - len(accepted) - len(unclear), lost=len(accepted) + len(unclear),
               note=f"{queued} jobs queued from them; {len(unclear)} answers without a usage "
               "line")
    assert not accepted, accepted[:5]
    assert not unclear, unclear[:5]
    assert queued == 0


def _outside_world(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The configured root, and model= values (as typed) that lead outside it."""
    root = tmp_path / "models"
    outside = tmp_path / "private"
    secret = outside / "secret-model"
    secret.mkdir(parents=True)
    for name in ("config.json", "secret-weights.bin", "tokenizer-private.json"):
        (secret / name).write_text("{}")
    (root / "inside").mkdir(parents=True)
    (root / "link-out").symlink_to(secret, target_is_directory=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "weights.txt").write_text("not a folder")
    return root, {
        "existing folder outside": str(secret),
        "missing folder outside": str(outside / "no-such-model"),
        "symlink in the root to a folder outside": str(root / "link-out"),
        "path through a symlinked folder": str(root / "escape" / "secret-model"),
        "missing path through a symlinked folder": str(root / "escape" / "gone"),
        "system folder": "/etc",
        "missing system folder": "/no-such-folder-17",
        "relative existing folder": "./tests",
        "relative missing folder": "./no-such-folder-17",
        "missing folder in the root": str(root / "absent"),
        "a file in the root": str(root / "weights.txt"),
    }


def test_model_paths_only_under_the_roots_and_errors_name_nothing_outside(
        tmp_path: Path, report: Report) -> None:
    root, refs = _outside_world(tmp_path)
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_text("pickle")
    settings = make_settings(tmp_path, model_dirs=[root], max_jobs_per_user=100_000)
    migrate.upgrade(settings.database_url)
    _catalog(tmp_path, settings)
    submitted: list[tuple[str, str, int]] = []
    checks = list(refs.items())
    for what, typed in [*checks, ("pickle-only folder in the root", str(pickled))]:
        commands = [f"/prompt test triage on eval model={typed}"]
        if len(submitted) < size(8, 100):
            commands.append(f"/dataset check train model={typed}")
        for text in commands:
            code, out = tunebot_cli(settings, "run", text)
            assert code == 0, out
            job_id = queued_job(out)
            submitted.append((what, text.split(" model=")[0], job_id))
    run_queued(settings, [j for _, _, j in submitted])
    answers: dict[tuple[str, str], str] = {}
    for what, command, job_id in submitted:
        status, error = job_outcome(settings, job_id)
        events = " ".join(job_thread(settings, job_id))
        answers[(what, command)] = f"{status}: {error} || {events}"
    # Named nothing outside the roots: no file of the secret folder, no symlink's target, no
    # worker folder a relative path resolved to — only what the user typed comes back.
    hidden = ("secret-weights.bin", "tokenizer-private.json", str(tmp_path / "private"),
              str(Path("tests").resolve()))
    leaks = [(k, h) for k, a in answers.items() for h in hidden
             if h in a and h not in refs.get(k[0], "")]
    # One answer for every refused path, whatever exists: only the typed text differs.
    refused = {k: re.sub(r"'[^']*'", "'…'", (jobs_error(a))) for k, a in answers.items()
               if not k[0].startswith("pickle")}
    shapes = {(k[1], v) for k, v in refused.items()}
    per_command = {c for c, _ in shapes}
    loaded = [k for k, a in answers.items() if a.startswith("succeeded")]
    listed_inside = "pytorch_model.bin" in " ".join(
        a for k, a in answers.items() if k[0].startswith("pickle"))
    report.add("17.13 model paths", "model= outside the roots: existing, missing, symlinked, "
               "system, relative, file", len(answers),
               held=len(answers) - len(leaks) - len(loaded), lost=len(leaks) + len(loaded),
               note=f"{len(shapes)} distinct answers for {len(per_command)} commands; names "
               f"outside the roots shown {len(leaks)}×; files listed inside a root: "
               f"{listed_inside}")
    assert not loaded, loaded
    assert not leaks, leaks[:3]
    assert len(shapes) == len(per_command), sorted(shapes)
    assert listed_inside  # under a root, the refusal still says which files it found


def jobs_error(answer: str) -> str:
    """The status and final error of a job's answer (its thread aside)."""
    return answer.split(" || ", 1)[0]
