"""Batched decoding for a causal LM that reuses one shared prompt prefix's KV cache.

Layout of one batch (P shared prefix tokens, suffixes right-aligned, padding in the middle):

    [prefix (cached once, expanded)] [pad pad] [suffix tokens ...] -> generated tokens
    positions 0..P-1                 masked    P..P+len-1

The causal mask works on cache slots and the padding mask hides the pad slots, while
explicit position ids give every real token the position it has in the un-padded prompt, so
each row computes what it would compute alone. Pad queries still see the prefix, so no
attention row is ever fully masked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

StopCheck = Callable[[int, list[int]], bool]  # (row, generated ids) -> stop now


@dataclass
class Prefix:
    """The KV cache of token ids shared by every prompt of a call, computed once (batch of 1)."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    def __len__(self) -> int:
        return len(self.ids)


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest shared token prefix, leaving every sequence at least one token."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs) - 1
    for i in range(max(n, 0)):
        tok = first[i]
        if any(s[i] != tok for s in seqs):
            return i
    return max(n, 0)


def supports_prefix(model: torch.nn.Module) -> bool:
    """Prefix reuse needs plain full-attention layers (no sliding window, no linear attention)."""
    cache = DynamicCache(config=model.config)
    return all(type(layer) is DynamicLayer for layer in cache.layers)


@torch.inference_mode()
def build_prefix(model: torch.nn.Module, ids: list[int]) -> Prefix:
    """Run the shared prefix once and keep its keys and values."""
    device = model.device
    x = torch.tensor([ids], device=device)
    cache = DynamicCache(config=model.config)
    model(input_ids=x, attention_mask=torch.ones_like(x), cache=cache, use_cache=True,
          logits_to_keep=1)
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    return Prefix(ids=list(ids), layers=layers)


def _expanded_cache(model: torch.nn.Module, prefix: Prefix | None, batch: int) -> DynamicCache:
    if prefix is None:
        return DynamicCache(config=model.config)
    # expand() is a view; the cache's first update concatenates, which makes the real copy.
    data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix.layers]
    return DynamicCache(ddp_cache_data=data, config=model.config)


def _pick(logits: torch.Tensor, temperature: float, top_p: float,
          generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # keeps the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_batch(
    model: torch.nn.Module,
    suffixes: list[list[int]],
    *,
    prefix: Prefix | None,
    pad_id: int,
    eos_ids: set[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    stop_check: StopCheck | None = None,
) -> list[list[int]]:
    """Generate for each suffix (after the shared prefix); returns new token ids without EOS."""
    device = model.device
    b, s = len(suffixes), max(len(x) for x in suffixes)
    p = len(prefix) if prefix is not None else 0
    ids = torch.full((b, s), pad_id, dtype=torch.long)
    attn = torch.zeros((b, p + s), dtype=torch.long)
    attn[:, :p] = 1
    pos = torch.full((b, s), p, dtype=torch.long)
    for i, suf in enumerate(suffixes):
        n = len(suf)
        ids[i, s - n:] = torch.tensor(suf)
        attn[i, p + s - n:] = 1
        pos[i, s - n:] = torch.arange(p, p + n)
    ids, attn, pos = ids.to(device), attn.to(device), pos.to(device)
    next_pos = torch.tensor([p + len(x) for x in suffixes], device=device)

    cache = _expanded_cache(model, prefix, b)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=cache,
                use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1, :]
    rows = list(range(b))
    generated: list[list[int]] = [[] for _ in range(b)]
    for _ in range(max_new_tokens):
        tokens = _pick(logits, temperature, top_p, generator)
        keep: list[int] = []
        for j, tok in enumerate(tokens.tolist()):
            r = rows[j]
            if tok in eos_ids:
                continue
            generated[r].append(tok)
            if len(generated[r]) >= max_new_tokens or (stop_check and stop_check(r, generated[r])):
                continue
            keep.append(j)
        if not keep:
            break
        if len(keep) < len(rows):
            # Finished rows leave the batch, so the rest stop paying for them.
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            attn, tokens, next_pos = attn[sel], tokens[sel], next_pos[sel]
            rows = [rows[j] for j in keep]
        attn = torch.cat([attn, attn.new_ones((len(rows), 1))], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=attn,
                    position_ids=next_pos[:, None], cache=cache, use_cache=True)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    return generated
