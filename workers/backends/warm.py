"""A per-process cache of loaded models, least recently used first out, bounded by memory."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from tunebot import telemetry
from tunebot.settings import Settings
from workers.backends.hf import HFBackend
from workers.backends.hf_load import local_dir, pick_device, weights_bytes
from workers.backends.refs import ModelRef, parse_model_ref

log = logging.getLogger(__name__)
Key = tuple[str, str, str]  # (model ref, adapter folder or "", device)


def default_budget_bytes(fraction: float = 0.6) -> int:
    """A share of this machine's RAM."""
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * fraction)


class WarmCache:
    """Loaded HF backends by (ref, adapter, device); evicts the LRU ones beyond budget_bytes."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes if budget_bytes is not None else default_budget_bytes()
        self._items: OrderedDict[Key, HFBackend] = OrderedDict()
        self._lock = threading.RLock()

    def __contains__(self, key: Key) -> bool:
        return key in self._items

    def keys(self) -> list[Key]:
        """Cached keys, least recently used first."""
        return list(self._items)

    @property
    def total_bytes(self) -> int:
        """Weight bytes of everything cached."""
        return sum(b.param_bytes for b in self._items.values())

    def get(self, ref: ModelRef | str, settings: Settings, *, adapter_dir: Path | None = None,
            device: str = "auto") -> HFBackend:
        """The cached backend for this key, loading (and evicting) when it is not there."""
        ref = parse_model_ref(ref) if isinstance(ref, str) else ref
        dev = pick_device(device)
        key: Key = (str(ref), str(adapter_dir or ""), dev)
        # One lock for loads too: two threads asking for one model must not load it twice.
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                telemetry.MODEL_CACHE.labels("hit").inc()
                return hit
            # Make room before loading, so old and new never sit in memory together past budget.
            self._evict(incoming=weights_bytes(local_dir(ref, settings)))
            started = time.monotonic()
            backend = HFBackend(ref, settings, dev, adapter_dir)
            telemetry.MODEL_CACHE.labels("load").inc()
            telemetry.MODEL_LOAD_SECONDS.labels(dev.split(":")[0]).observe(
                time.monotonic() - started)
            self._items[key] = backend
            self._evict(incoming=0, keep=key)
            return backend

    def clear(self) -> None:
        """Drop every cached model."""
        with self._lock:
            self._items.clear()
        _release()

    def _evict(self, *, incoming: int, keep: Key | None = None) -> None:
        evicted = False
        while (self.total_bytes + incoming > self.budget_bytes
               and any(k != keep for k in self._items)):
            old = next(k for k in self._items if k != keep)
            log.info("evicting model %s from the warm cache", old[0])
            del self._items[old]
            telemetry.MODEL_CACHE.labels("evict").inc()
            evicted = True
        if evicted:
            _release()


def _release() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_DEFAULT: WarmCache | None = None


def default_cache() -> WarmCache:
    """This process's warm cache, created on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = WarmCache()
    return _DEFAULT


def get_backend(ref: ModelRef | str, settings: Settings, *, adapter_dir: Path | None = None,
                device: str = "auto", cache: WarmCache | None = None) -> HFBackend:
    """A warm HF backend from this process's cache (a second call for the same key is instant)."""
    return (cache or default_cache()).get(ref, settings, adapter_dir=adapter_dir, device=device)
