"""The warm model cache counts its hits, loads and evictions (tunebot_model_cache_total)."""

from __future__ import annotations

from pathlib import Path

from devtools.tiny_model import build_tiny_model
from tests.conftest import make_settings
from tunebot import telemetry
from workers.backends.warm import WarmCache


def counts() -> dict[str, float]:
    return {r: telemetry.MODEL_CACHE.labels(r)._value.get() for r in ("hit", "load", "evict")}


def test_cache_hits_loads_and_evictions_are_counted(tiny_model_dir: Path,
                                                    tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    loads_timed = telemetry.MODEL_LOAD_SECONDS.labels("cpu")._sum.get()
    before = counts()
    cache = WarmCache()
    first = cache.get(str(tiny_model_dir), settings, device="cpu")
    cache.get(str(tiny_model_dir), settings, device="cpu")
    cache.budget_bytes = int(first.param_bytes * 1.5)  # room for one tiny model, not two
    cache.get(str(build_tiny_model(tmp_path / "other", seed=1)), settings, device="cpu")
    after = counts()
    assert {r: after[r] - before[r] for r in after} == {"hit": 1, "load": 2, "evict": 1}
    assert telemetry.MODEL_LOAD_SECONDS.labels("cpu")._sum.get() > loads_timed
