"""One Settings object, built at each entrypoint and passed down."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CsvList = Annotated[list[str], NoDecode]
PathList = Annotated[list[Path], NoDecode]


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "local-user"


class Settings(BaseSettings):
    """Every knob of tunebot; env vars use the TUNEBOT_ prefix, Slack's own names stay."""

    model_config = SettingsConfigDict(
        env_prefix="TUNEBOT_", env_file=".env", extra="ignore", populate_by_name=True
    )

    var_dir: Path = Path("var")
    database_url: str = ""
    broker_url: str = ""
    artifacts_dir: Path | None = None
    model_cache_dir: Path | None = None
    # Roots a model=/path may name (after symlinks); default: the model cache and artifacts.
    model_dirs: PathList = []

    slack_bot_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_BOT_TOKEN", "TUNEBOT_SLACK_BOT_TOKEN")
    )
    slack_app_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_APP_TOKEN", "TUNEBOT_SLACK_APP_TOKEN")
    )
    slack_signing_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET", "TUNEBOT_SLACK_SIGNING_SECRET")
    )
    slack_client_id: str | None = Field(
        None, validation_alias=AliasChoices("SLACK_CLIENT_ID", "TUNEBOT_SLACK_CLIENT_ID")
    )
    slack_client_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_CLIENT_SECRET", "TUNEBOT_SLACK_CLIENT_SECRET")
    )
    slack_api_url: str = "https://slack.com/api/"
    slack_posts_per_second: float = Field(1.0, gt=0, le=100)
    slack_file_hosts: CsvList = ["files.slack.com"]
    encryption_key: SecretStr | None = None

    admins: CsvList = []
    finetune_allowed: CsvList = []
    max_jobs_per_user: int = Field(3, ge=1, le=100_000)

    # Labels that move only on evidence (the promotion gate), never by a catalog import.
    protected_labels: CsvList = ["production"]
    # The promotion rule (tunebot/promotion.py): not-worse (default) or better.
    promotion_rule: str = Field("not-worse", pattern=r"^(not-worse|better)$")
    min_production_accuracy: float = Field(0.0, ge=0.0, le=1.0)
    cli_team: str = "local"
    cli_user: str = Field(default_factory=_login)

    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(15.0, gt=0)
    reconcile_seconds: float = Field(30.0, gt=0)
    max_attempts: int = Field(5, ge=1, le=100)
    broker_visibility_seconds: int = Field(6 * 3600, ge=60)
    worker_concurrency: int = Field(1, ge=1, le=64)

    # Regression watches (tunebot/watches.py): beat sends a tick every watch_tick_seconds; a
    # watch may fire at most every watch_min_seconds; a workspace keeps at most max_watches.
    max_watches: int = Field(20, ge=0, le=10_000)
    watch_min_seconds: int = Field(3600, ge=1)
    watch_tick_seconds: float = Field(60.0, gt=0, le=3600)

    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    # The header the key goes in: Authorization (as "Bearer KEY"), or e.g. api-key (Azure).
    openai_api_key_header: str = Field("Authorization", pattern=r"^[A-Za-z0-9-]{1,64}$")
    openai_concurrency: int = Field(4, ge=1, le=256)
    openai_timeout_seconds: float = Field(60.0, gt=0)

    price_gpu_hour: float = Field(2.50, ge=0)
    price_cpu_hour: float = Field(0.05, ge=0)
    price_per_1k_tokens: float = Field(0.0, ge=0)

    # Matmul precision of CPU inference (workers/backends/cpu_linear.py). bf16 multiplies in bf16
    # where the CPU does so natively (AVX-512-BF16 or AMX; fp32 elsewhere, and the thread says
    # so): about 1.4x faster prompt tests on such a CPU, but greedy answers can differ from fp32
    # at near-ties (5 of 80 on the bundled model's sentiment set), so it is a choice, not the
    # default; each batch is still checked against fp32 on a sample and falls back on a difference.
    cpu_precision: str = Field("fp32", pattern=r"^(fp32|bf16)$")
    max_upload_mb: int = Field(50, ge=1, le=10_000)
    # The largest request body the HTTP bot reads (Slack's payloads are a few KB); bigger ones
    # get a 413 before the signature is checked, without the rest being read.
    max_body_bytes: int = Field(2**20, ge=1024, le=64 * 2**20)
    max_rows: int = Field(1_000_000, ge=1)
    # Parquet and Arrow files are compressed: what a dataset file may decode to in memory.
    max_decoded_mb: int = Field(512, ge=1, le=100_000)
    log_level: str = "INFO"
    # Prometheus metrics (tunebot/telemetry.py): workers and the Socket Mode bot serve
    # /metrics here (several workers on a host take the next free ports); the HTTP bot serves
    # it on its own port too. 0 turns every metrics endpoint off.
    metrics_port: int = Field(9470, ge=0, le=65535)
    metrics_bind: str = Field("127.0.0.1", min_length=1, max_length=255)

    @field_validator("admins", "finetune_allowed", "slack_file_hosts", "model_dirs",
                     "protected_labels",
                     mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        var = self.var_dir
        if not self.database_url:
            self.database_url = f"sqlite:///{var / 'tunebot.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{var / 'broker.db'}"
        if self.artifacts_dir is None:
            self.artifacts_dir = var / "artifacts"
        if self.model_cache_dir is None:
            self.model_cache_dir = var / "models"
        if not self.model_dirs:
            self.model_dirs = [self.model_cache_dir, self.artifacts_dir]
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be shorter than "
                f"lease_seconds ({self.lease_seconds})"
            )
        return self

    @property
    def artifacts(self) -> Path:
        """The artifact root (never None after validation)."""
        assert self.artifacts_dir is not None
        return self.artifacts_dir

    @property
    def models_dir(self) -> Path:
        """Where converted base models are cached."""
        assert self.model_cache_dir is not None
        return self.model_cache_dir

    @property
    def model_roots(self) -> list[Path]:
        """The folders local models may be loaded from, symlinks resolved: TUNEBOT_MODEL_DIRS
        plus the model cache (tunebot's own converted models live there)."""
        roots = [*self.model_dirs, self.models_dir]
        return list(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))

    def is_admin(self, user_id: str) -> bool:
        """Whether a user id is in TUNEBOT_ADMINS."""
        return user_id in self.admins


class SettingsError(SystemExit):
    """A bad setting: one line naming it, exit status 2."""


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment, or exit with one line naming the bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        name = loc if loc.isupper() else f"TUNEBOT_{loc.upper()}"
        msg = err.get("msg", "invalid")
        raise SettingsError(f"tunebot: bad setting {name}: {msg}") from None
