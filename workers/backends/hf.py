"""Local transformers backend: chat templates, length-bucketed batches, a shared-prefix KV cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import torch

from tunebot.errors import JobError
from tunebot.settings import Settings
from workers.backends import cpu_linear
from workers.backends import hf_generate as gen
from workers.backends.base import Generation, GenParams, Message, OnBatch
from workers.backends.hf_load import apply_adapter, load_model, local_dir, pick_device
from workers.backends.refs import ModelRef, parse_model_ref

MIN_PREFIX_TOKENS = 8  # below this the extra forward pass costs more than it saves
# Padded prompt tokens in one prefill forward. On CPU a matmul is near its best speed from a few
# hundred rows on, and smaller groups of similar length waste less on padding; the groups'
# caches are joined afterwards, so decoding still runs a whole batch per forward.
PREFILL_TOKENS = {"cpu": 1024, "cuda": 16384}


class HFBackend:
    """A causal LM on local transformers, answering chat prompts in batches."""

    def __init__(
        self,
        model_ref: ModelRef | str,
        settings: Settings,
        device: str = "auto",
        adapter_dir: Path | None = None,
        *,
        batch_size: int | None = None,
        prefix_cache: bool = True,
        name: str | None = None,
        prefill_tokens: int | None = None,
        onednn: bool = True,
    ) -> None:
        ref = parse_model_ref(model_ref) if isinstance(model_ref, str) else model_ref
        dev = pick_device(device)
        model, tokenizer = load_model(local_dir(ref, settings), device=dev)
        if adapter_dir is not None:
            model = apply_adapter(model, Path(adapter_dir))
        self._setup(model, tokenizer, name or str(ref), batch_size, prefix_cache, prefill_tokens,
                    onednn)

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, *, name: str, batch_size: int | None = None,
                    prefix_cache: bool = True, prefill_tokens: int | None = None,
                    onednn: bool = True) -> HFBackend:
        """Wrap a model already in memory (e.g. one a fine-tune just trained)."""
        self = cls.__new__(cls)
        self._setup(model.eval(), tokenizer, name, batch_size, prefix_cache, prefill_tokens,
                    onednn)
        return self

    def _setup(self, model: Any, tokenizer: Any, name: str, batch_size: int | None,
               prefix_cache: bool, prefill_tokens: int | None = None,
               onednn: bool = True) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = str(model.device)
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        # Rows decoded together: each new token is one forward over all of them.
        self.batch_size = batch_size or 64
        self.prefill_tokens = prefill_tokens or PREFILL_TOKENS[kind]
        self.prefix_cache = prefix_cache and gen.supports_prefix(model)
        # On the CPU the linear layers go through oneDNN (see cpu_linear); training keeps
        # PyTorch's path, so a model shared with a fine-tune is unaffected.
        self.onednn_layers = cpu_linear.use_onednn(model) if onednn and kind == "cpu" else 0
        self.pad_id = _pad_id(tokenizer, model)
        self.eos_ids = _eos_ids(tokenizer, model)
        self._last_prefix: gen.Prefix | None = None
        self._weights_version = -1

    @property
    def param_bytes(self) -> int:
        """Memory held by the weights and buffers."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def render(self, messages: list[Message]) -> str:
        """The prompt text the model sees: its chat template, or the contents joined plainly."""
        if getattr(self.tokenizer, "chat_template", None):
            try:
                return self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            except Exception as exc:  # templates raise their own errors (e.g. no system role)
                raise JobError(f"{self.name}'s chat template rejected the prompt: {exc}") from exc
        return "\n\n".join(m["content"] for m in messages) + "\n"

    def encode(self, messages: list[Message]) -> list[int]:
        """Token ids of the rendered prompt."""
        plain = not getattr(self.tokenizer, "chat_template", None)
        text = self.render(messages)
        return list(self.tokenizer(text, add_special_tokens=plain)["input_ids"])

    def generate(self, prompts: list[list[Message]], params: GenParams, *,
                 on_batch: OnBatch | None = None) -> list[Generation]:
        """Answer each prompt, in order, batching by length and reusing the shared prefix.

        Batches hold at most batch_size rows, evenly sized, so progress (on_batch) comes in
        steps of similar length.
        """
        if not prompts:
            return []
        ids = [self.encode(p) for p in prompts]
        self._check_context(max(len(x) for x in ids), params.max_new_tokens)
        t0 = time.perf_counter()
        prefix = self._prefix_for(ids)
        p_len = len(prefix) if prefix is not None else 0
        prefix_ms = (time.perf_counter() - t0) * 1000
        generator = _generator(self.device, params)

        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        results: list[Generation | None] = [None] * len(ids)
        n_batches = -(-len(order) // self.batch_size)
        size = -(-len(order) // n_batches)
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            t1 = time.perf_counter()
            outs = gen.generate_batch(
                self.model, [ids[i][p_len:] for i in chunk], prefix=prefix, pad_id=self.pad_id,
                eos_ids=self.eos_ids, max_new_tokens=params.max_new_tokens,
                temperature=params.temperature, top_p=params.top_p, generator=generator,
                stop_check=self._stop_check(params.stop), prefill_tokens=self.prefill_tokens,
            )
            batch_ms = (time.perf_counter() - t1) * 1000
            per_case = batch_ms / len(chunk) + prefix_ms / len(ids)
            for i, out in zip(chunk, outs, strict=True):
                raw = self.tokenizer.decode(out, skip_special_tokens=True)
                text = _cut_at_stop(raw, params.stop)
                finish = ("stop" if text != raw else
                          "length" if len(out) >= params.max_new_tokens else "eos")
                results[i] = Generation(
                    text=text, tokens_in=len(ids[i]), tokens_out=len(out), latency_ms=per_case,
                    extra={"batch_ms": round(batch_ms, 2), "batch_size": len(chunk),
                           "prefix_tokens": p_len, "prefix_ms": round(prefix_ms, 2),
                           "finish_reason": finish},
                )
            if on_batch is not None:
                # every row of the chunk was filled in just above
                on_batch(chunk, cast(list[Generation], [results[i] for i in chunk]))
        return [r for r in results if r is not None]

    def _prefix_for(self, ids: list[list[int]]) -> gen.Prefix | None:
        if not self.prefix_cache:
            return None
        # In-place weight updates (a fine-tune in progress) bump tensor versions: a KV cache
        # computed with older weights must not be reused.
        version = sum(p._version for p in self.model.parameters())
        if version != self._weights_version:
            self._last_prefix, self._weights_version = None, version
        last = self._last_prefix
        if len(ids) == 1:
            # A runner feeding cases one call at a time still shares the previous call's prefix.
            fits = last is not None and len(ids[0]) > len(last) and ids[0][:len(last)] == last.ids
            return last if fits else None
        p_len = gen.common_prefix_len(ids)
        if p_len < MIN_PREFIX_TOKENS:
            return None
        if last is None or last.ids != ids[0][:p_len]:
            self._last_prefix = gen.build_prefix(self.model, ids[0][:p_len])
        return self._last_prefix

    def _check_context(self, longest: int, max_new: int) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and longest + max_new > limit:
            raise JobError(f"a prompt of {longest} tokens plus max_new_tokens={max_new} does not "
                           f"fit {self.name}'s context of {limit} tokens")

    def _stop_check(self, stop: tuple[str, ...]) -> gen.StopCheck | None:
        if not stop:
            return None
        decode = self.tokenizer.decode
        return lambda _row, out: any(s in decode(out, skip_special_tokens=True) for s in stop)


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[:min(cuts)] if cuts else text


def _generator(device: str, params: GenParams) -> torch.Generator | None:
    if params.temperature <= 0:
        return None
    g = torch.Generator(device=device)
    if params.seed is None:
        g.seed()
    else:
        g.manual_seed(params.seed)
    return g


def _pad_id(tokenizer: Any, model: Any) -> int:
    # Pads are masked out, so any id works; eos is the usual stand-in when there is no pad.
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, model.config.eos_token_id, 0):
        if isinstance(cand, list):
            cand = cand[0] if cand else None
        if cand is not None:
            return int(cand)
    return 0


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    found: set[int] = set()
    for cand in (tokenizer.eos_token_id, model.generation_config.eos_token_id,
                 model.config.eos_token_id):
        if isinstance(cand, int):
            found.add(cand)
        elif isinstance(cand, list | tuple):
            found.update(int(c) for c in cand)
    return found
