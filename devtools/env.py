"""The environment that reproduces a Settings object in a child process (workers, bots)."""

from __future__ import annotations

import os

from tunebot.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces these settings in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEBOT_", "SLACK_"))}
    env.update({
        "TUNEBOT_VAR_DIR": str(settings.var_dir),
        "TUNEBOT_DATABASE_URL": settings.database_url,
        "TUNEBOT_BROKER_URL": settings.broker_url,
        "TUNEBOT_ARTIFACTS_DIR": str(settings.artifacts),
        "TUNEBOT_MODEL_CACHE_DIR": str(settings.models_dir),
        "TUNEBOT_MODEL_DIRS": ",".join(str(p) for p in settings.model_dirs),
        "TUNEBOT_LEASE_SECONDS": str(settings.lease_seconds),
        "TUNEBOT_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
        "TUNEBOT_RECONCILE_SECONDS": str(settings.reconcile_seconds),
        "TUNEBOT_MAX_ATTEMPTS": str(settings.max_attempts),
        "TUNEBOT_CLI_TEAM": settings.cli_team,
        "TUNEBOT_CLI_USER": settings.cli_user,
        "TUNEBOT_SLACK_POSTS_PER_SECOND": str(settings.slack_posts_per_second),
        "TUNEBOT_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "TUNEBOT_MAX_JOBS_PER_USER": str(settings.max_jobs_per_user),
        "TUNEBOT_MAX_WATCHES": str(settings.max_watches),
        "TUNEBOT_WATCH_MIN_SECONDS": str(settings.watch_min_seconds),
        "TUNEBOT_WATCH_TICK_SECONDS": str(settings.watch_tick_seconds),
        "TUNEBOT_ADMINS": ",".join(settings.admins),
        "TUNEBOT_FINETUNE_ALLOWED": ",".join(settings.finetune_allowed),
        "TUNEBOT_SLACK_FILE_HOSTS": ",".join(settings.slack_file_hosts),
        "TUNEBOT_LOG_LEVEL": "INFO",
        "TUNEBOT_METRICS_PORT": str(settings.metrics_port),
        "TUNEBOT_METRICS_BIND": settings.metrics_bind,
        "PYTHONUNBUFFERED": "1",
    })
    if settings.openai_base_url:
        env["TUNEBOT_OPENAI_BASE_URL"] = settings.openai_base_url
        env["TUNEBOT_OPENAI_API_KEY_HEADER"] = settings.openai_api_key_header
        env["TUNEBOT_OPENAI_CONCURRENCY"] = str(settings.openai_concurrency)
        env["TUNEBOT_OPENAI_TIMEOUT_SECONDS"] = str(settings.openai_timeout_seconds)
    if settings.openai_api_key is not None:
        env["TUNEBOT_OPENAI_API_KEY"] = settings.openai_api_key.get_secret_value()
    if settings.slack_bot_token is not None:
        env["SLACK_BOT_TOKEN"] = settings.slack_bot_token.get_secret_value()
    env["TUNEBOT_SLACK_API_URL"] = settings.slack_api_url
    return env
