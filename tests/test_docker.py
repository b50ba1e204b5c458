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
    assert '".[bot]"' in (REPO / "docker/Dockerfile.bot").read_text()
