"""Local transformers backend: chat templates, length-bucketed batches, a shared-prefix KV cache.

bf16 on the CPU (workers/backends/cpu_linear.py), with TUNEBOT_CPU_PRECISION=bf16 on a CPU that
multiplies bf16 natively: greedy calls run the decoder's matmuls in bf16 (lm_head stays fp32, so
logits keep fp32 resolution and do not tie on bf16 rounding). Each finished batch is checked
before it is handed on: a sample of its rows (CHECK_FRACTION of them, at least CHECK_MIN) is
run once more in fp32, teacher-forced on the bf16 answer, and fp32's own greedy choice must be
the bf16 token at every step and must end where it ended — exactly "fp32 would have answered
this row the same". On any difference that batch is answered again in fp32, the rest of the
call and every later call stay fp32, and `precision_note` says why. A sample cannot prove every
row equal: rows at a near-tie can still differ (see tunebot/settings.py), hence opt-in.
"""

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
# Rows of each bf16 batch checked against fp32: this fraction, at least CHECK_MIN (all if fewer).
CHECK_FRACTION, CHECK_MIN = 1 / 16, 2


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
        precision: str | None = None,
    ) -> None:
        ref = parse_model_ref(model_ref) if isinstance(model_ref, str) else model_ref
        dev = pick_device(device)
        model, tokenizer = load_model(local_dir(ref, settings), device=dev)
        if adapter_dir is not None:
            model = apply_adapter(model, Path(adapter_dir))
        self._setup(model, tokenizer, name or str(ref), batch_size, prefix_cache, prefill_tokens,
                    onednn, precision or settings.cpu_precision)

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, *, name: str, batch_size: int | None = None,
                    prefix_cache: bool = True, prefill_tokens: int | None = None,
                    onednn: bool = True, precision: str = "fp32") -> HFBackend:
        """Wrap a model already in memory (e.g. one a fine-tune just trained)."""
        self = cls.__new__(cls)
        self._setup(model.eval(), tokenizer, name, batch_size, prefix_cache, prefill_tokens,
                    onednn, precision)
        return self

    def _setup(self, model: Any, tokenizer: Any, name: str, batch_size: int | None,
               prefix_cache: bool, prefill_tokens: int | None = None,
               onednn: bool = True, precision: str = "fp32") -> None:
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
        self._prefixes: dict[bool, gen.Prefix] = {}  # the last shared prefix, by bf16 on/off
        self._weights_version = -1
        self.precision, self.precision_note = self._pick_precision(precision)
        self.bf16_checked = 0  # rows checked against fp32 so far, every one agreeing

    def _pick_precision(self, wanted: str) -> tuple[str, str]:
        if wanted not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {wanted!r}")
        if wanted == "fp32":
            return "fp32", "fp32"
        if not self.onednn_layers:
            return "fp32", "fp32 (bf16 asked for, but this model does not run on the CPU's oneDNN)"
        probe = cpu_linear.bf16_probe()
        if probe["feature"] is None or not probe["use"]:
            return "fp32", f"fp32 (bf16 asked for, but {probe['why']})"
        return "bf16", (f"bf16 matmuls ({probe['feature']}; {probe.get('speedup', '?')}x fp32 "
                        "in the probe), answers checked against fp32 on a sample of each batch")

    @property
    def bf16(self) -> bool:
        """Whether greedy calls multiply in bf16 (until a check finds fp32 disagreeing)."""
        return self.precision == "bf16"

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
        steps of similar length. A batch is handed to on_batch once, after its bf16 check.
        """
        if not prompts:
            return []
        ids = [self.encode(p) for p in prompts]
        self._check_context(max(len(x) for x in ids), params.max_new_tokens)
        bf16 = self.bf16 and params.temperature <= 0  # sampled calls: fp32 (no greedy to check)
        self._set_bf16(bf16)
        t0 = time.perf_counter()
        prefix = self._prefix_for(ids, bf16)
        prefix_ms = (time.perf_counter() - t0) * 1000
        generator = _generator(self.device, params)

        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        results: list[Generation | None] = [None] * len(ids)
        n_batches = -(-len(order) // self.batch_size)
        size = -(-len(order) // n_batches)
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            t1 = time.perf_counter()
            while True:  # once, or twice when a bf16 batch is answered again in fp32
                p_len = len(prefix) if prefix is not None else 0
                # Called here, not through a helper method: measured in a Celery worker, the
                # same call one frame deeper made single requests ~40% slower (tests/workers/
                # test_latency_e2e.py), which the same code in a plain process did not show.
                outs = gen.generate_batch(
                    self.model, [ids[i][p_len:] for i in chunk], prefix=prefix,
                    pad_id=self.pad_id, eos_ids=self.eos_ids,
                    max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                    top_p=params.top_p, generator=generator,
                    stop_check=self._stop_check(params.stop), prefill_tokens=self.prefill_tokens)
                if not bf16:
                    break
                differ, checked = self._check_bf16(ids, chunk, outs, params)
                if not differ:
                    self.bf16_checked += checked
                    break
                # fp32 answers a row differently: this batch again, fp32 from now on.
                self.precision = "fp32"
                self.precision_note = (
                    f"fp32 (bf16 matmuls were tried, but fp32 answered {differ} of "
                    f"{checked} checked rows differently after {self.bf16_checked} agreed; "
                    "that batch and everything after it were answered in fp32)")
                bf16 = False
                self._set_bf16(False, drop=True)
                prefix = self._prefix_for(ids, False)
            batch_ms = (time.perf_counter() - t1) * 1000
            per_case = batch_ms / len(chunk) + prefix_ms / len(ids)
            for i, out in zip(chunk, outs, strict=True):
                text, finish = self._finish(out, params)
                results[i] = Generation(
                    text=text, tokens_in=len(ids[i]), tokens_out=len(out), latency_ms=per_case,
                    extra={"batch_ms": round(batch_ms, 2), "batch_size": len(chunk),
                           "prefix_tokens": p_len, "prefix_ms": round(prefix_ms, 2),
                           "finish_reason": finish, "precision": "bf16" if bf16 else "fp32"},
                )
            if on_batch is not None:
                # every row of the chunk was filled in just above
                on_batch(chunk, cast(list[Generation], [results[i] for i in chunk]))
        return [r for r in results if r is not None]

    def _set_bf16(self, on: bool, *, drop: bool = False) -> None:
        # Set on every call: another backend may share this model (and have switched it on).
        if not self.onednn_layers:
            return
        cpu_linear.set_bf16(self.model, on, drop=drop)
        head = self.model.get_output_embeddings()
        if isinstance(head, cpu_linear.OneDNNLinear):
            head.bf16 = False  # logits in fp32: bf16 rounding would make ties of near-ties

    def _finish(self, out: list[int], params: GenParams) -> tuple[str, str]:
        raw = self.tokenizer.decode(out, skip_special_tokens=True)
        text = _cut_at_stop(raw, params.stop)
        finish = ("stop" if text != raw else
                  "length" if len(out) >= params.max_new_tokens else "eos")
        return text, finish

    def _check_bf16(self, ids: list[list[int]], chunk: list[int], outs: list[list[int]],
                    params: GenParams) -> tuple[int, int]:
        """(rows fp32 answers differently, rows checked) for a sample of a bf16 batch, spread
        over its lengths (the batch is sorted by prompt length)."""
        k = min(len(chunk), max(CHECK_MIN, round(len(chunk) * CHECK_FRACTION)))
        picks = sorted({round(j * (len(chunk) - 1) / max(k - 1, 1)) for j in range(k)})
        rows = [(ids[chunk[j]], outs[j], self._finish(outs[j], params)[1] == "eos")
                for j in picks]
        with cpu_linear.fp32(self.model):
            prefix = self._prefix_for(ids, False)  # the call's prefix, as fp32 would have it
            differ = gen.greedy_disagreements(self.model, rows, prefix=prefix,
                                              pad_id=self.pad_id, eos_ids=self.eos_ids)
        return differ, len(rows)

    def _prefix_for(self, ids: list[list[int]], bf16: bool = False) -> gen.Prefix | None:
        if not self.prefix_cache:
            return None
        # In-place weight updates (a fine-tune in progress) bump tensor versions: a KV cache
        # computed with older weights must not be reused.
        version = sum(p._version for p in self.model.parameters())
        if version != self._weights_version:
            self._prefixes, self._weights_version = {}, version
        last = self._prefixes.get(bf16)
        if len(ids) == 1:
            # A runner feeding cases one call at a time still shares the previous call's prefix.
            fits = last is not None and len(ids[0]) > len(last) and ids[0][:len(last)] == last.ids
            return last if fits else None
        p_len = gen.common_prefix_len(ids)
        if p_len < MIN_PREFIX_TOKENS:
            return None
        if last is None or last.ids != ids[0][:p_len]:
            last = self._prefixes[bf16] = gen.build_prefix(self.model, ids[0][:p_len])
        return last

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
