"""Load a local transformers model safely: offline, safetensors only, no remote code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from tunebot.errors import JobError
from tunebot.settings import Settings
from workers.backends.gguf_cache import converted_dir
from workers.backends.refs import ModelRef, local_model_dir

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def pick_device(device: str) -> str:
    """Resolve "auto" to cuda when a GPU is visible, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise JobError(f"unknown device '{device}' (cpu, cuda or auto)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise JobError("device=cuda was asked for but this worker has no GPU")
    return device


def default_dtype(device: str) -> torch.dtype:
    """fp32 on CPU (exact and fast enough for small models); bf16 on GPUs that support it."""
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def model_roots(settings: Settings) -> list[Path]:
    """Where a local model may be loaded from: TUNEBOT_MODEL_DIRS, the model cache, and the
    Hugging Face cache (a hub id's snapshot, which a fine-tune's base may be recorded as)."""
    from huggingface_hub import constants

    return [*settings.model_roots, Path(constants.HF_HUB_CACHE).expanduser()]


def local_dir(ref: ModelRef, settings: Settings) -> Path:
    """The folder holding a model's weights on this worker, never downloading anything; a
    path must lie, symlinks resolved, under the model roots (the error names nothing else)."""
    if ref.kind == "bundled":
        return converted_dir(settings.models_dir)
    if ref.kind == "path":
        return local_model_dir(ref.name, model_roots(settings))
    if ref.kind == "hub":
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(ref.name, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError) as exc:
            raise JobError(f"model {ref.name} is not available offline on this worker") from exc
    raise JobError(f"model '{ref}' is not a local transformers model")


def check_weights(folder: Path, what: str, stem: str = "model") -> None:
    """Refuse a folder whose weights are pickles only (or missing). The error names the folder
    and its pickle files: every folder reaching here came from local_dir (under the model
    roots), the Hugging Face cache or tunebot's own artifacts, never from elsewhere."""
    if not folder.is_dir():
        raise JobError(f"{what} folder {folder} does not exist on this worker")
    names = sorted(p.name for p in folder.iterdir())
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise JobError(
            f"{what} at {folder} has only pickle weights ({', '.join(pickles[:3])}); tunebot "
            f"loads safetensors only — re-save it with save_pretrained(safe_serialization=True)"
        )
    raise JobError(f"{what} at {folder} has no {stem}*.safetensors weights")


def weights_bytes(folder: Path) -> int:
    """Size on disk of a folder's safetensors weights (an estimate of their memory)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def load_model(folder: Path, *, device: str, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a local folder, on device, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_weights(folder, "model")
    if not (folder / "config.json").is_file():
        raise JobError(f"model at {folder} has no config.json")
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **common)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype or default_dtype(device), use_safetensors=True, **common
        )
    except (OSError, ValueError, KeyError) as exc:
        raise JobError(f"cannot load the model at {folder}: {_first_line(exc)}") from exc
    # cast: transformers wraps PreTrainedModel.to with functools.wraps, which mypy reads as an
    # unbound function (self first); nn.Module.to is the signature it really has.
    return cast(torch.nn.Module, model).to(device).eval(), tokenizer


def apply_adapter(model: Any, adapter_dir: Path) -> Any:
    """Load a peft LoRA adapter (safetensors) onto model and merge it for plain-speed inference."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise JobError(f"adapter folder {adapter_dir} has no adapter_config.json")
    check_weights(adapter_dir, "adapter", stem="adapter_model")
    try:
        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise JobError(f"cannot load the adapter at {adapter_dir}: {_first_line(exc)}") from exc
    return peft_model.merge_and_unload().eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
