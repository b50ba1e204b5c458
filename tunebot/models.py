"""SQL tables only; writes go through keyword-only functions in the service modules."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint, event, text
from sqlmodel import Field, SQLModel

from tunebot.errors import UserError


def utcnow() -> datetime:
    """Aware UTC now; every timestamp is stored and compared in UTC."""
    return datetime.now(UTC)


def _json(default: Any = None) -> Any:
    return Field(default_factory=lambda: default() if callable(default) else default,
                 sa_column=Column(JSON, nullable=True))


class JobStatus(enum.StrEnum):
    """The states of a job."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    # A parent job between its stages (tunebot/jobs/chain.py): holds no worker and no lease,
    # counts as active (quota, active_key), woken to "queued" when a child ends.
    waiting = "waiting"


ACTIVE_STATUSES = ("queued", "running", "waiting")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class Prompt(SQLModel, table=True):
    """A named prompt of one workspace; its content lives in immutable versions."""

    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    team_id: str = Field(index=True, max_length=32)
    name: str = Field(max_length=64)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    owner: str = Field(max_length=64)
    tags: list[str] = _json(list)
    datasets: dict[str, str] = _json(dict)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None
    deleted_by: str | None = None


class PromptVersion(SQLModel, table=True):
    """One immutable version of a prompt: template, parameters and documentation."""

    __tablename__ = "prompt_versions"
    __table_args__ = (UniqueConstraint("prompt_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    team_id: str = Field(index=True, max_length=32)
    prompt_id: int = Field(foreign_key="prompts.id", index=True)
    version: int
    content: dict[str, Any] = _json(dict)
    content_hash: str = Field(max_length=64)
    author: str = Field(max_length=64)
    message: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(default_factory=utcnow)


class Label(SQLModel, table=True):
    """A label (production, staging, …) pointing at one version of a prompt or model."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("team_id", "kind", "name", "label"),)

    id: int | None = Field(default=None, primary_key=True)
    team_id: str = Field(index=True, max_length=32)
    kind: str = Field(max_length=16)  # "prompt" | "model"
    name: str = Field(max_length=64)
    label: str = Field(max_length=64)
    version: int
    updated_by: str = Field(max_length=64)
    updated_at: datetime = Field(default_factory=utcnow)


class LabelHistory(SQLModel, table=True):
    """Every label move: who, when, from which version to which."""

    __tablename__ = "label_history"

    id: int | None = Field(default=None, primary_key=True)
    team_id: str = Field(index=True, max_length=32)
    kind: str = Field(max_length=16)
    name: str = Field(max_length=64)
    label: str = Field(max_length=64)
    from_version: int | None = None
    to_version: int | None = None
    moved_by: str = Field(max_length=64)
    moved_at: datetime = Field(default_factory=utcnow)
    # Why it moved: the promotion gate's sentence, or an admin's `force reason="…"`.
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    forced: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    evidence: dict[str, Any] | None = _json(None)


class Dataset(SQLModel, table=True):
    """An uploaded data file (eval set or training data), one row per version."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("team_id", "name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    team_id: str = Field(index=True, max_length=32)
    name: str = Field(max_length=64)
    version: int = 1
    content_hash: str = Field(max_length=64)
    format: str = Field(max_length=16)
    row_count: int = 0
    stats: dict[str, Any] = _json(dict)
    report: dict[str, Any] = _json(dict)
    artifact_path: str = Field(max_length=512)
    created_by: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None


class Job(SQLModel, table=True):
    """A unit of queued work; the SQL row is the source of truth, the broker only a wake-up."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(
            "uq_jobs_active_key",
            "active_key",
            unique=True,
            sqlite_where=text("status IN ('queued', 'running', 'waiting')"),
            postgresql_where=text("status IN ('queued', 'running', 'waiting')"),
        ),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    team_id: str = Field(index=True, max_length=32)
    kind: str = Field(max_length=32)
    queue: str = Field(max_length=32)
    # The job whose stage this is (tunebot/jobs/chain.py): exempt from the quota, cancelled
    # with it, and its end wakes the parent.
    parent_id: int | None = Field(default=None, index=True)
    status: str = Field(default=JobStatus.queued.value, max_length=16, index=True)
    requested_by: str = Field(max_length=64)
    channel: str | None = Field(default=None, max_length=64)
    thread_ts: str | None = Field(default=None, max_length=32)
    status_ts: str | None = Field(default=None, max_length=32)  # the root message kept current
    notify_owner: str | None = Field(default=None, max_length=128)
    notify_until: datetime | None = None
    response_url: str | None = Field(default=None, max_length=1024)
    title: str = Field(default="", max_length=512)
    params: dict[str, Any] = _json(dict)
    result: dict[str, Any] = _json(dict)
    idempotency_key: str | None = Field(default=None, max_length=256, unique=True)
    active_key: str | None = Field(default=None, max_length=256)
    attempt: int = 0
    max_attempts: int = 5
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = None
    heartbeat_at: datetime | None = None
    cancel_requested: bool = False
    progress: float = 0.0
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    sends: int = 0
    last_sent_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Slack delivery of the job's thread: failures in a row (reset once delivered), the last
    # error, and when delivery stopped for good (a permanent refusal, or attempts spent).
    delivery_attempts: int = 0
    delivery_error: str | None = Field(default=None, max_length=512)
    delivery_failed_at: datetime | None = None


class JobEvent(SQLModel, table=True):
    """One thing a job said (a transport-neutral reply), delivered to Slack at most once."""

    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    team_id: str = Field(index=True, max_length=32)
    seq: int
    kind: str = Field(default="reply", max_length=32)
    payload: dict[str, Any] = _json(dict)
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None
    delivery_attempts: int = 0
    slack_ts: str | None = Field(default=None, max_length=32)


class Metric(SQLModel, table=True):
    """A scalar a job logged at a step (loss, accuracy, tokens/s, …)."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "name", "step"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    step: int
    name: str = Field(max_length=64)
    value: float
    created_at: datetime = Field(default_factory=utcnow)


class CaseResult(SQLModel, table=True):
    """One eval case of one candidate of a prompt test or comparison."""

    __tablename__ = "case_results"
    __table_args__ = (UniqueConstraint("job_id", "candidate", "case_index", "sample_index"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    candidate: str = Field(default="", max_length=128)
    case_index: int
    sample_index: int = 0
    rendered: list[dict[str, str]] = _json(list)
    output: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    expected: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    scores: list[dict[str, Any]] = _json(list)
    passed: bool | None = None
    latency_ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0


class ModelVersion(SQLModel, table=True):
    """A registered fine-tuned adapter on its base model."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("team_id", "name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    team_id: str = Field(index=True, max_length=32)
    name: str = Field(max_length=64)
    version: int
    base_model: str = Field(max_length=256)
    adapter_path: str = Field(max_length=512)
    dataset_hash: str = Field(default="", max_length=64)
    prompt_ref: str | None = Field(default=None, max_length=128)
    template: str = Field(default="minimal", max_length=16)
    hyperparams: dict[str, Any] = _json(dict)
    code_version: str = Field(default="", max_length=64)
    best_step: int | None = None
    metrics: dict[str, Any] = _json(dict)
    job_id: int | None = Field(default=None, foreign_key="jobs.id")
    created_by: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class PendingUpload(SQLModel, table=True):
    """`/dataset add NAME` in Slack without a file: the user's next upload there becomes NAME."""

    __tablename__ = "pending_uploads"

    id: int | None = Field(default=None, primary_key=True)
    team_id: str = Field(index=True, max_length=32)
    user_id: str = Field(max_length=64)
    channel: str = Field(max_length=64)
    name: str = Field(max_length=64)
    # `/dataset add NAME expected=COLUMN`: the column applied when the file arrives.
    expected_column: str | None = Field(default=None, max_length=128)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None


class FormState(SQLModel, table=True):
    """A form's state too large for Slack's private_metadata, kept here under a random key."""

    __tablename__ = "form_states"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=64, unique=True)
    team_id: str = Field(max_length=32)
    user_id: str = Field(max_length=64)
    data: dict[str, Any] = _json(dict)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)


class TeamGuidelines(SQLModel, table=True):
    """A workspace's guidelines for prompts (prompts/guidelines.yaml), as last imported."""

    __tablename__ = "team_guidelines"

    team_id: str = Field(primary_key=True, max_length=32)
    rules: dict[str, Any] = _json(dict)
    updated_by: str = Field(default="", max_length=64)
    updated_at: datetime = Field(default_factory=utcnow)


class SlackIdentity(SQLModel, table=True):
    """Which workspace a bot token belongs to (auth.test), cached by the token's hash."""

    __tablename__ = "slack_identities"

    token_sha256: str = Field(primary_key=True, max_length=64)
    team_id: str = Field(max_length=32)
    team_name: str = Field(default="", max_length=255)
    checked_at: datetime = Field(default_factory=utcnow)


class Watch(SQLModel, table=True):
    """A regression watch: a prompt reference re-tested on a dataset on a schedule, each run
    compared (paired) with the last accepted one; the schedule lives here, not in beat."""

    __tablename__ = "watches"
    __table_args__ = (Index("ix_watches_state_next_run_at", "state", "next_run_at"),)

    id: int | None = Field(default=None, primary_key=True)
    team_id: str = Field(index=True, max_length=32)
    owner: str = Field(max_length=64)
    prompt_ref: str = Field(max_length=140)  # as typed: NAME, NAME@3 or NAME:production
    prompt_name: str = Field(max_length=64)
    dataset: str = Field(max_length=64)
    model: str | None = Field(default=None, max_length=256)  # None: the version's own model
    channel: str | None = Field(default=None, max_length=64)
    interval_seconds: int
    next_run_at: datetime
    # Bumped by every claim: the compare-and-set that lets one ticker, and one only, take a
    # due run; it also names the run's job (idempotency key watch:ID:SEQ).
    run_seq: int = 0
    state: str = Field(default="active", max_length=16)  # active | paused | stopped
    note: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    stopped_at: datetime | None = None
    stopped_by: str | None = Field(default=None, max_length=64)
    last_job_id: int | None = None  # the latest run's job
    last_run_at: datetime | None = None  # when the latest run was judged
    last_outcome: str | None = Field(default=None, max_length=32)
    last_accuracy: float | None = None
    # The last accepted run: what every new run is compared with, case by case.
    accepted_job_id: int | None = None
    accepted_at: datetime | None = None
    accepted_version: int | None = None
    accepted_model: str | None = Field(default=None, max_length=256)
    accepted_dataset_version: int | None = None
    accepted_dataset_hash: str | None = Field(default=None, max_length=64)
    accepted_accuracy: float | None = None
    accepted_passes: list[bool | None] | None = _json(None)
    # The run that raised the current regression alert (cleared when a run is accepted):
    # a later run as bad as it stays quiet, so one regression posts once.
    alert_job_id: int | None = None
    alert_passes: list[bool | None] | None = _json(None)


# Invariants live with the tables, so every process that can write a PromptVersion has them
# (a worker that only runs prompt tests never imports the catalog).
@event.listens_for(PromptVersion, "before_update")
def _refuse_update(mapper: Any, connection: Any, target: PromptVersion) -> None:
    raise UserError(f"prompt versions are immutable (version {target.version}); "
                    "save a new version instead")


@event.listens_for(PromptVersion, "before_delete")
def _refuse_delete(mapper: Any, connection: Any, target: PromptVersion) -> None:
    raise UserError("prompt versions are never deleted; delete the prompt (soft) instead")
