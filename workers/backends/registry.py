"""From a model= string to a ready Backend."""

from __future__ import annotations

from tunebot.errors import JobError
from tunebot.settings import Settings
from workers.backends import refs
from workers.backends.base import Backend
from workers.backends.hf_load import model_roots
from workers.backends.openai_compat import OpenAIBackend
from workers.backends.refs import FtResolver, parse_model_ref
from workers.backends.warm import WarmCache, get_backend


def backend_for(ref_str: str, settings: Settings, *, resolve_ft: FtResolver | None = None,
                device: str = "auto", cache: WarmCache | None = None) -> Backend:
    """The backend for a model ref: warm local transformers, base + adapter, or an HTTP endpoint."""
    roots = model_roots(settings)
    ref = parse_model_ref(ref_str, roots=roots)
    if ref.kind == "openai":
        if not settings.openai_base_url:
            raise JobError(f"model {ref} needs TUNEBOT_OPENAI_BASE_URL set on this worker")
        return OpenAIBackend(
            ref.name, settings.openai_base_url, settings.openai_api_key,
            concurrency=settings.openai_concurrency, timeout=settings.openai_timeout_seconds,
            key_header=settings.openai_api_key_header,
        )
    if ref.kind == "ft":
        base, adapter_dir = refs.resolve_ft(ref, resolve_ft, roots=roots)
        backend = get_backend(base, settings, adapter_dir=adapter_dir, device=device, cache=cache)
        backend.name = str(ref)
        return backend
    return get_backend(ref, settings, device=device, cache=cache)

