"""Atomic checkpoints in the job's artifact folder: adapter, optimizer, scheduler, RNG, progress.

Layout: ARTIFACTS/checkpoints/step-000040/{adapter/, optimizer.pt, scheduler.pt, rng.pt,
progress.json}. A checkpoint is written under a temporary name and renamed into place, so a
`step-N` folder is complete by construction and a kill mid-write leaves only a `.tmp-` folder
that the next save sweeps away. Tensors and states are saved with torch.save and read back
with `torch.load(weights_only=True)` (no arbitrary unpickling): the RNG states are converted to
plain tensors, ints and lists first. Files are read only from inside the job's artifact folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from tunebot.errors import JobError

STEP_RE = re.compile(r"^step-(\d{6,})$")
ADAPTER_FILE = "adapter_model.safetensors"


def step_dir(root: Path, step: int) -> Path:
    """The folder of the checkpoint at `step`."""
    return root / f"step-{step:06d}"


def complete_steps(root: Path) -> list[int]:
    """Steps with a complete checkpoint, ascending."""
    if not root.is_dir():
        return []
    steps = [int(m.group(1)) for p in root.iterdir() if (m := STEP_RE.match(p.name))]
    return sorted(s for s in steps if (step_dir(root, s) / "progress.json").is_file())


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint folder, if any."""
    steps = complete_steps(root)
    return step_dir(root, steps[-1]) if steps else None


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as weights_only-loadable values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def save(root: Path, step: int, *, model: Any, optimizer: torch.optim.Optimizer,
         scheduler: Any, progress: dict[str, Any]) -> Path:
    """Write the checkpoint for `step` atomically; returns its folder."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{step:06d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    model.save_pretrained(tmp / "adapter", safe_serialization=True)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "progress.json").write_text(json.dumps(progress))
    _fsync_tree(tmp)
    final = step_dir(root, step)
    if final.exists():  # the same step saved again after a resume: replace it whole
        trash = root / f".tmp-old-{uuid.uuid4().hex[:6]}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)
    return final


def inside(path: Path, artifact_dir: Path) -> Path:
    """`path` resolved, refusing anything outside the job's own artifact folder."""
    real = path.resolve()
    if not real.is_relative_to(artifact_dir.resolve()):
        raise JobError(f"refusing to read {path}: not inside this job's artifact folder")
    return real


def _load_pt(path: Path, artifact_dir: Path) -> Any:
    return torch.load(inside(path, artifact_dir), map_location="cpu", weights_only=True)


def load(folder: Path, artifact_dir: Path, *, model: Any, optimizer: torch.optim.Optimizer,
         scheduler: Any) -> dict[str, Any]:
    """Restore adapter, optimizer, scheduler and RNG from a checkpoint; returns its progress."""
    adapter = load_file(str(inside(folder / "adapter" / ADAPTER_FILE, artifact_dir)))
    result = set_peft_model_state_dict(model, adapter)
    if getattr(result, "unexpected_keys", None):
        raise JobError(f"checkpoint {folder.name} does not match this model's adapter")
    optimizer.load_state_dict(_load_pt(folder / "optimizer.pt", artifact_dir))
    scheduler.load_state_dict(_load_pt(folder / "scheduler.pt", artifact_dir))
    set_rng_state(_load_pt(folder / "rng.pt", artifact_dir))
    return read_progress(folder, artifact_dir)


def read_progress(folder: Path, artifact_dir: Path) -> dict[str, Any]:
    """A checkpoint's progress record (step, best, history, …)."""
    text = inside(folder / "progress.json", artifact_dir).read_text()
    progress: dict[str, Any] = json.loads(text)
    return progress


def prune(root: Path, keep: set[int]) -> None:
    """Delete complete checkpoints whose step is not in `keep`."""
    for step in complete_steps(root):
        if step not in keep:
            shutil.rmtree(step_dir(root, step), ignore_errors=True)


def export_adapter(checkpoint: Path, dest: Path) -> Path:
    """Copy a checkpoint's adapter (peft format, safetensors) to `dest`, replacing it atomically."""
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:6]}"
    shutil.copytree(checkpoint / "adapter", tmp)
    _fsync_tree(tmp)
    if dest.exists():
        trash = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:6]}"
        os.rename(dest, trash)
        os.rename(tmp, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, dest)
    return dest
