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
from typing import TYPE_CHECKING, cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

StopCheck = Callable[[int, list[int]], bool]  # (row, generated ids) -> stop now


# A transformers model's .device and .config, typed: nn.Module's __getattr__ types every
# attribute it does not declare as Tensor | Module.
def _device(model: torch.nn.Module) -> torch.device:
    return cast(torch.device, model.device)


def _config(model: torch.nn.Module) -> PreTrainedConfig:
    return cast("PreTrainedConfig", model.config)


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
    cache = DynamicCache(config=_config(model))
    return all(type(layer) is DynamicLayer for layer in cache.layers)


@torch.inference_mode()
def build_prefix(model: torch.nn.Module, ids: list[int]) -> Prefix:
    """Run the shared prefix once and keep its keys and values."""
    device = _device(model)
    x = torch.tensor([ids], device=device)
    cache = DynamicCache(config=_config(model))
    model(input_ids=x, attention_mask=torch.ones_like(x), cache=cache, use_cache=True,
          logits_to_keep=1)
    # Only called where supports_prefix() holds: plain DynamicLayers, filled by the forward above.
    layers = [(cast(torch.Tensor, layer.keys), cast(torch.Tensor, layer.values))
              for layer in cast("list[DynamicLayer]", cache.layers)]
    return Prefix(ids=list(ids), layers=layers)


def _expanded_cache(model: torch.nn.Module, prefix: Prefix | None, batch: int) -> DynamicCache:
    if prefix is None:
        return DynamicCache(config=_config(model))
    # expand() is a view; the cache's first update concatenates, which makes the real copy.
    data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix.layers]
    return DynamicCache(ddp_cache_data=data, config=_config(model))


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


def prefill_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Rows (indices into lengths) split into prefill groups of similar length.

    Rows are taken shortest first; a group closes when padding every row to its longest would
    pass max_tokens (a group always holds at least one row).
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[i] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _prefill(model: torch.nn.Module, suffixes: list[list[int]], prefix: Prefix | None,
             pad_id: int, keep: int = 1) -> tuple[DynamicCache, torch.Tensor]:
    """One forward over right-aligned suffixes after the prefix: (cache, the logits of each
    row's last `keep` positions, [b, keep, vocab])."""
    device = _device(model)
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
    cache = _expanded_cache(model, prefix, b)
    out = model(input_ids=ids.to(device), attention_mask=attn.to(device),
                position_ids=pos.to(device), cache=cache, use_cache=True, logits_to_keep=keep)
    return cache, out.logits


def _joined_cache(model: torch.nn.Module, caches: list[DynamicCache], widths: list[int],
                  p: int) -> DynamicCache:
    """The groups' caches as one batch: each group's suffix slots right-aligned, the gap zero
    (masked), so every row keeps the slots and positions it was prefilled with."""
    s = max(widths)
    data = []
    for layer in range(len(caches[0].layers)):
        joined = []
        for kind in ("keys", "values"):
            parts = [getattr(c.layers[layer], kind) for c in caches]
            first = parts[0]
            out = first.new_zeros((sum(t.shape[0] for t in parts), first.shape[1], p + s,
                                   first.shape[3]))
            row = 0
            for t, w in zip(parts, widths, strict=True):
                n = t.shape[0]
                out[row:row + n, :, :p] = t[:, :, :p]
                out[row:row + n, :, p + s - w:] = t[:, :, p:]
                row += n
            joined.append(out)
        data.append((joined[0], joined[1]))
    return DynamicCache(ddp_cache_data=data, config=_config(model))


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
    prefill_tokens: int | None = None,
) -> list[list[int]]:
    """Generate for each suffix (after the shared prefix); returns new token ids without EOS.

    With prefill_tokens, the prompts are prefilled in groups of similar length (at most that
    many padded tokens a forward, so padding and activations stay small) and their caches are
    then joined, so every new token costs one forward for all rows. Models whose cache is not
    plain full attention are prefilled in one group.
    """
    device = _device(model)
    b = len(suffixes)
    p = len(prefix) if prefix is not None else 0
    lengths = [len(x) for x in suffixes]
    if prefill_tokens and b > 1 and supports_prefix(model):
        groups = prefill_groups(lengths, prefill_tokens)
    else:
        groups = [list(range(b))]
    if len(groups) == 1:
        cache, logits = _prefill(model, suffixes, prefix, pad_id)
        logits = logits[:, -1, :]
        rows = list(range(b))
    else:
        parts = [_prefill(model, [suffixes[i] for i in g], prefix, pad_id) for g in groups]
        widths = [max(lengths[i] for i in g) for g in groups]
        cache = _joined_cache(model, [c for c, _ in parts], widths, p)
        logits = torch.cat([lg[:, -1, :] for _, lg in parts])
        rows = [i for g in groups for i in g]
    s = max(lengths)
    attn = torch.zeros((b, p + s), dtype=torch.long)
    attn[:, :p] = 1
    for j, r in enumerate(rows):
        attn[j, p + s - lengths[r]:] = 1
    attn = attn.to(device)
    next_pos = torch.tensor([p + lengths[r] for r in rows], device=device)

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


@torch.inference_mode()
def greedy_disagreements(model: torch.nn.Module, rows: list[tuple[list[int], list[int], bool]],
                         *, prefix: Prefix | None, pad_id: int, eos_ids: set[int]) -> int:
    """How many (prompt ids, generated ids, ended on EOS) rows this model would not have
    generated greedily: teacher-forced in one forward, its argmax must be each generated token
    in turn and, where the row ended on EOS, an EOS token next. Rows ended by a stop string or
    the token limit are checked up to their last token."""
    p = len(prefix) if prefix is not None else 0
    keep = max(len(out) for _, out, _ in rows) + 1
    _, logits = _prefill(model, [prompt[p:] + out for prompt, out, _ in rows], prefix, pad_id,
                         keep)
    choice = logits.argmax(-1).tolist()  # [b, keep]: the last `keep` positions of each row
    differ = 0
    for i, (_, out, eos) in enumerate(rows):
        n = len(out)
        # The prediction of out[j] sits at kept index keep - n - 1 + j; the next one at keep - 1.
        picked = choice[i][keep - n - 1:keep - 1]
        if picked != out or (eos and choice[i][keep - 1] not in eos_ids):
            differ += 1
    return differ
