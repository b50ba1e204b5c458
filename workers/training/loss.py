"""The completion-only loss, computed where it is needed and nowhere else.

`model(input_ids, labels=labels)` runs every row of a padded batch through every layer and
lm_head. Here, all exact (tests compare loss and gradients with that call):

1. Logits only at supervised positions. The decoder's hidden states are gathered where the
   next token is supervised, and only those rows go through lm_head and the cross-entropy. A
   chat answer is a few tokens of a ~50-token example, so the [B, S, vocab] logits (49k wide
   for SmolLM2: ~20% of the forward FLOPs plus a large softmax, and again in backward) shrink
   to [n_answers, vocab].
2. One packed sequence per batch, its shared prefix once. Rows of a batch usually start with
   the same tokens (the template's default system prompt, a fixed instruction, `text:`);
   under causal attention those positions compute the same keys and values in every row. The
   batch becomes one sequence — the prefix once, then each row's rest — with a block mask (a
   token sees the prefix and the earlier tokens of its own row) and position ids that restart
   after the prefix for each row. No padding, no repeated prefix, one large matmul per layer.
   Gradients from every row flow into the single prefix, as they would into its copies. Only
   LoRA dropout differs: one mask for the shared prefix instead of one per row.
3. Each row ends at its last learnt prediction: the final end-of-turn and newline are inputs
   that nothing learnt depends on.

Packing attends over the whole packed sequence under a mask, so for big batches of long rows
(over MAX_PACKED tokens) it falls back to padded rows, right-padded with no attention mask
(real tokens never see the padding after them), with the shared prefix run once as a KV cache
expanded to the batch — unless gradient checkpointing is on, which cannot keep a cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from workers.training.collate import IGNORE, Batch, MaskedBatchError

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

MIN_SHARED_PREFIX = 4  # below this, a second forward call costs more than it saves
# Packing attends over the whole packed sequence under a mask, so its attention cost grows with
# the square of the batch's tokens; past this many, padded rows (and a prefix cache) are cheaper.
MAX_PACKED = 1024


@dataclass
class LossOut:
    """Summed loss (a graph when training), supervised token count, and argmax hits."""

    loss_sum: torch.Tensor
    n_tokens: int
    n_correct: int


def parts(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder stack, lm_head) of a causal LM, through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def can_pack(model: Any) -> bool:
    """Whether packing applies: plain full attention (no sliding window, no recurrence) that
    takes a custom 4D mask (sdpa or eager attention)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    try:
        cache = DynamicCache(config=base.config)
    except Exception:  # an architecture whose cache cannot be built from its config
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def supervised_loss(model: Any, batch: Batch, *, share_prefix: bool = True, pack: bool = True,
                    prefix_cache: bool = True) -> LossOut:
    """Cross-entropy summed over supervised tokens; logits only where a label is set."""
    labels = batch.labels
    targets = labels[:, 1:]
    where = targets != IGNORE
    n = int(where.sum())
    if n == 0:
        raise MaskedBatchError("a training batch has no supervised tokens: every label is -100 "
                               "(the answers were masked or truncated away), so it would "
                               "train nothing")
    rows, cols = where.nonzero(as_tuple=True)  # hidden state at cols predicts cols + 1
    decoder, lm_head = parts(model)
    p = batch.shared_prefix if share_prefix and labels.shape[0] > 1 else 0
    ends = _row_ends(rows, cols, labels.shape[0])
    packed = p + sum(e - p for e in ends)
    if pack and packed <= MAX_PACKED:
        hidden, index = _packed(decoder, batch.input_ids, p, ends)
        picked = hidden[index[rows] + cols - p]
    else:
        # Causal: tokens after the last position whose prediction is learnt (the final
        # end-of-turn and newline, the longest row's padding) change nothing that is.
        ids = batch.input_ids[:, : max(ends)]
        if p >= MIN_SHARED_PREFIX and prefix_cache:
            picked = _with_prefix(decoder, ids, p)[rows, cols - p]
        else:
            picked = decoder(input_ids=ids, use_cache=False).last_hidden_state[rows, cols]
    logits = lm_head(picked).float()
    tgt = targets[where]
    loss_sum = F.cross_entropy(logits, tgt, reduction="sum")
    n_correct = int((logits.detach().argmax(-1) == tgt).sum())
    return LossOut(loss_sum, n, n_correct)


def _row_ends(rows: torch.Tensor, cols: torch.Tensor, n_rows: int) -> list[int]:
    # Per row, one past the last position whose hidden state is needed.
    ends = torch.zeros(n_rows, dtype=torch.long, device=cols.device)
    ends.scatter_reduce_(0, rows, cols + 1, reduce="amax")
    return [int(e) for e in ends.tolist()]


def _packed(decoder: torch.nn.Module, ids: torch.Tensor, p: int,
            ends: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence: the shared prefix once, then each row's rest, with a block mask.

    Query i may see key j when j <= i and j is in the prefix or in i's own row; position ids
    restart after the prefix for every row, so each row computes exactly what it would alone.
    Returns the hidden states [T, h] and, per row, where its position p sits in them.
    """
    dev = ids.device
    pieces = [ids[0, :p]] + [ids[r, p:e] for r, e in enumerate(ends)]
    seq = torch.cat(pieces).unsqueeze(0)
    sizes = [e - p for e in ends]
    positions = torch.cat([torch.arange(p, device=dev)]
                          + [torch.arange(p, e, device=dev) for e in ends]).unsqueeze(0)
    segment = torch.cat([torch.full((p,), -1, device=dev)]
                        + [torch.full((s,), r, device=dev) for r, s in enumerate(sizes)])
    t = seq.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=dev).tril()
    visible = (segment[None, :] == segment[:, None]) | (segment[None, :] == -1)
    # cast: get_input_embeddings is a transformers method that nn.Module does not declare.
    dtype: torch.dtype = cast(Any, decoder).get_input_embeddings().weight.dtype
    # Additive form: eager attention adds the mask to the scores, sdpa accepts it as well.
    mask = torch.zeros(t, t, dtype=dtype, device=dev).masked_fill(
        ~(causal & visible), torch.finfo(dtype).min)[None, None]
    hidden = decoder(input_ids=seq, position_ids=positions, attention_mask=mask,
                     use_cache=False).last_hidden_state[0]
    starts = torch.tensor([p + sum(sizes[:r]) for r in range(len(sizes))], device=dev)
    return hidden, starts


def _with_prefix(decoder: torch.nn.Module, ids: torch.Tensor, p: int) -> torch.Tensor:
    b = ids.shape[0]
    first = decoder(input_ids=ids[:1, :p], use_cache=True)
    data = [(layer.keys.expand(b, -1, -1, -1), layer.values.expand(b, -1, -1, -1))
            for layer in first.cache.layers]
    cache = DynamicCache(ddp_cache_data=data, config=cast("PreTrainedConfig", decoder.config))
    rest = decoder(input_ids=ids[:, p:], cache=cache, use_cache=True)
    return cast(torch.Tensor, rest.last_hidden_state)
