"""No Docker engine runs here, so the compose file is checked by reading it."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def test_compose_services_images_and_wiring() -> None:
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "bot", "notifier", "worker-inference",
            "worker-gpu"} <= set(services)
    for name in ("migrate", "bot", "notifier", "worker-inference", "worker-gpu"):
        env = services[name]["environment"]
        assert env["TUNEBOT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["TUNEBOT_BROKER_URL"].startswith("redis://redis:")
    assert services["notifier"]["command"][-1] == "io"
    assert services["worker-gpu"]["command"][-1] == "gpu"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["bot"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully")
    for dockerfile in ("Dockerfile.bot", "Dockerfile.worker"):
        assert (REPO / "docker" / dockerfile).is_file()
    worker = (REPO / "docker/Dockerfile.worker").read_text()
    assert "torch==${TORCH_VERSION}" in worker
    # The GPU image carries no Slack stack: no bot/ package, no `bot` extra.
    assert "COPY bot" not in worker and "[bot" not in worker and "bot]" not in worker
    assert '".[bot,ops]"' in (REPO / "docker/Dockerfile.bot").read_text()
    # Both images install from the lock (torch stays per image, outside it).
    for dockerfile in ("Dockerfile.bot", "Dockerfile.worker"):
        text = (REPO / "docker" / dockerfile).read_text()
        assert "COPY pyproject.toml requirements.lock" in text
        assert "pip install --no-cache-dir -c requirements.lock -e" in text


def test_flower_watches_the_redis_broker_and_workers_expose_metrics() -> None:
    """Flower runs from the bot image (the `ops` extra) against the same Redis broker, on
    loopback only; every service's metrics endpoint listens where Prometheus can reach it."""
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    services = compose["services"]
    flower = services["flower"]
    assert flower["image"] == "tunebot-bot" and "user" not in flower
    assert flower["command"][:2] == ["tunebot", "flower"]
    assert flower["command"][flower["command"].index("--port") + 1] == "5555"
    assert flower["environment"]["TUNEBOT_BROKER_URL"].startswith("redis://redis:")
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert "ops" in (REPO / "docker/Dockerfile.bot").read_text().split('-e ".[')[1].split("]")[0]
    for name in ("bot", "notifier", "worker-inference", "worker-gpu"):
        env = services[name]["environment"]
        assert env["TUNEBOT_METRICS_BIND"] == "0.0.0.0", name
        assert 1 <= int(env["TUNEBOT_METRICS_PORT"]) <= 65535, name


def test_one_artifacts_volume_wherever_artifacts_are_read_or_written() -> None:
    """Datasets the bot stores are read by workers; charts the workers write are posted by the
    notifier: every one of them mounts the same volume, at the folder the settings name, and
    the bot image's user owns it (issue 17, item 5)."""
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert "artifacts" in compose["volumes"]
    users = {"migrate", "bot", "notifier", "beat", "worker-inference", "worker-gpu"}
    mounts: dict[str, str] = {}
    for name in users:
        env = services[name]["environment"]
        found = [v.split(":") for v in services[name].get("volumes", [])
                 if v.split(":")[0] == "artifacts"]
        assert len(found) == 1, f"{name} does not mount the artifacts volume"
        mounts[name] = found[0][1].rstrip("/")
        # Every folder the service reads or writes lies on that volume.
        for key in ("TUNEBOT_ARTIFACTS_DIR", "TUNEBOT_VAR_DIR", "TUNEBOT_MODEL_CACHE_DIR"):
            assert env.get(key, "").startswith(mounts[name] + "/"), (name, key, env.get(key))
        assert env["TUNEBOT_ARTIFACTS_DIR"] == services["bot"]["environment"][
            "TUNEBOT_ARTIFACTS_DIR"]
    assert set(mounts.values()) == {"/data"}, mounts
    # The bot image runs as uid 1000 in a root-owned /app: /data is made and owned by that
    # user in the image (a new volume starts with it), and the one-shot migrate step hands an
    # older volume's writable folders to the same uid before the bot starts.
    dockerfile = (REPO / "docker/Dockerfile.bot").read_text()
    user = dockerfile.rsplit("USER ", 1)[1].split()[0]
    assert user == "1000"
    assert "install -d -o 1000 -g 1000 /data " in dockerfile
    assert dockerfile.index("/data/artifacts") < dockerfile.rindex("USER ")
    for folder in ("/data/var", "/data/artifacts/datasets"):
        assert folder in dockerfile
    migrate = services["migrate"]
    script = " ".join(migrate["command"])
    assert migrate.get("user") in ("0", "0:0", "root")
    assert "chown -R 1000:1000 /data/artifacts/datasets /data/var" in script
    assert script.rstrip().endswith("exec tunebot db upgrade")
    for name in users - {"migrate"}:
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully")
        # Only the one-shot step runs as root among the bot image's services.
        if services[name].get("image") == "tunebot-bot":
            assert "user" not in services[name], name


def test_one_beat_service_ticks_the_watches() -> None:
    """Celery beat runs once, as its own service on the bot image (no torch), against the same
    broker and database; no worker starts another (the watches' schedule is in SQL, so a second
    beat would be harmless, but it is not the design)."""
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    services = compose["services"]
    beat = services["beat"]
    assert beat["command"] == ["tunebot", "beat"]
    assert beat["image"] == "tunebot-bot" and "user" not in beat and "ports" not in beat
    env = beat["environment"]
    assert env["TUNEBOT_BROKER_URL"].startswith("redis://redis:")
    assert env["TUNEBOT_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["TUNEBOT_VAR_DIR"].startswith("/data/")  # its schedule file and lock
    assert beat["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert beat["depends_on"]["redis"]["condition"] == "service_healthy"
    for name, service in services.items():
        command = service.get("command") or []
        if name != "beat" and isinstance(command, list):
            assert "beat" not in command and "--beat" not in command, name
