"""Chat examples → token ids with completion-only labels; length-grouped, padded batches.

Labels: a token is supervised (label = its id) when it belongs to an assistant message's
content or that turn's end-of-turn marker; everything else (system, user, the template's role
headers, the newline after the end-of-turn) is -100. Spans are found by rendering the chat
template up to each assistant turn, so any template that renders prefix-consistently works;
the rendered text is tokenised once and spans are mapped through the offsets, so token merges
at a boundary cannot shift them. Assistant messages with `weight: 0` are not supervised.

Truncation at max_seq_len keeps the answer: the prompt side is cut from the left (the oldest
context goes first, the question's end and the assistant header stay). If the supervised part
alone is longer than max_seq_len, half the window goes to the prompt's tail and the answer is
cut on the right.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunebot.errors import JobError

IGNORE = -100


class MaskedBatchError(JobError):
    """A batch with no supervised token: training on it would silently do nothing."""


@dataclass
class Encoded:
    """One tokenised example: ids, completion-only labels, and whether it was cut."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_supervised(self) -> int:
        """How many tokens carry a label."""
        return sum(1 for x in self.labels if x != IGNORE)


def messages_of(example: Any) -> list[dict[str, Any]]:
    """The chat messages of an Example (tunebot.datafiles) or of a plain list of messages."""
    messages = getattr(example, "messages", example)
    if not isinstance(messages, list):
        raise TypeError(f"expected chat messages, got {type(example).__name__}")
    return messages


def _render(tokenizer: Any, messages: list[dict[str, Any]], gen: bool) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return str(tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=gen))


def answer_spans(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[str, list[tuple]]:
    """The rendered chat and the character spans of its supervised assistant turns."""
    text = _render(tokenizer, messages, gen=False)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or m.get("weight", 1) == 0:
            continue
        head = _render(tokenizer, messages[:i], gen=True) if i else ""
        through = _render(tokenizer, messages[: i + 1], gen=False)
        if not (text.startswith(through) and through.startswith(head)):
            raise JobError("this model's chat template does not render a conversation "
                           "prefix-consistently, so the assistant turns cannot be located "
                           "for completion-only loss")
        end = len(through.rstrip())  # the newline after the end-of-turn marker is not learnt
        if end > len(head):
            spans.append((len(head), end))
    return text, spans


def encode_chat(tokenizer: Any, messages: list[dict[str, Any]], max_seq_len: int) -> Encoded:
    """Tokenise one conversation with the model's chat template; labels on the answers only."""
    text, spans = answer_spans(tokenizer, messages)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # slow (pure Python) tokenizers have no offsets
        raise JobError("this model has no fast tokenizer (tokenizer.json), which training "
                       "needs to locate the answers") from None
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if any(b > s and a < e for s, e in spans):
            labels[t] = ids[t]
    return truncate(Encoded(ids, labels), max_seq_len)


def truncate(enc: Encoded, max_seq_len: int) -> Encoded:
    """Cut to max_seq_len keeping the answer (see the module docstring)."""
    n = len(enc.input_ids)
    if n <= max_seq_len:
        return enc
    sup = [t for t, x in enumerate(enc.labels) if x != IGNORE]
    first = sup[0] if sup else n
    if n - first <= max_seq_len:
        start = n - max_seq_len
    else:
        start = first - min(first, max_seq_len // 2)
    end = start + max_seq_len
    return Encoded(enc.input_ids[start:end], enc.labels[start:end], truncated=True)


def encode_all(tokenizer: Any, examples: Iterable[Any], max_seq_len: int) -> list[Encoded]:
    """encode_chat over examples; an example left with no supervised token is an error."""
    out = []
    for i, ex in enumerate(examples):
        enc = encode_chat(tokenizer, messages_of(ex), max_seq_len)
        if enc.n_supervised == 0:
            line = getattr(ex, "line", i + 1)
            raise MaskedBatchError(f"example on line {line} has no assistant tokens to learn "
                                   f"after applying the chat template (max_seq_len={max_seq_len})")
        out.append(enc)
    return out


def batch_order(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
                group_by_length: bool = True) -> list[list[int]]:
    """One epoch's batches of example indices: shuffled, then grouped by length.

    Like transformers' LengthGroupedSampler: shuffle, cut into mega-batches of up to 50
    batches, sort each by length so a batch's rows need little padding, then shuffle the
    batches. Seeded by (seed, epoch) alone, so a resumed run replays the same order.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if not group_by_length:
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    mega = batch_size * max(1, min(50, len(idx) // (batch_size * 4) or 1))
    batches: list[list[int]] = []
    for m in range(0, len(idx), mega):
        chunk = sorted(idx[m:m + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def step_plan(lengths: Sequence[int], *, batch_size: int, grad_accum: int, epochs: int,
              seed: int, group_by_length: bool = True,
              max_steps: int | None = None) -> list[tuple[int, list[list[int]]]]:
    """The whole run as optimizer steps: (epoch, micro-batches) each; step k is plan[k-1]."""
    plan = []
    for epoch in range(epochs):
        batches = batch_order(lengths, batch_size, seed=seed, epoch=epoch,
                              group_by_length=group_by_length)
        plan += [(epoch, batches[i:i + grad_accum]) for i in range(0, len(batches), grad_accum)]
    return plan[:max_steps] if max_steps else plan


@dataclass
class Batch:
    """Right-padded tensors and the token prefix every row shares."""

    input_ids: torch.Tensor  # [B, S]
    labels: torch.Tensor  # [B, S], IGNORE on padding and unsupervised tokens
    n_tokens: int  # real (non-pad) tokens
    n_supervised: int
    shared_prefix: int  # tokens 0..p-1 are identical in every row and carry no prediction
    lengths: list[int]  # real tokens per row

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on another device."""
        return Batch(self.input_ids.to(device), self.labels.to(device), self.n_tokens,
                     self.n_supervised, self.shared_prefix, self.lengths)


def collate(items: Sequence[Encoded], pad_id: int, *, pad_to: int | None = None) -> Batch:
    """Pad to the longest row (dynamic padding) on the right; find the shared prefix."""
    width = pad_to or max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for r, e in enumerate(items):
        ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[r, : len(e.labels)] = torch.tensor(e.labels)
    n_sup = int((labels[:, 1:] != IGNORE).sum())
    lengths = [len(e.input_ids) for e in items]
    return Batch(ids, labels, sum(lengths), n_sup, shared_prefix_len(items), lengths)


def shared_prefix_len(items: Sequence[Encoded]) -> int:
    """Tokens every row starts with, stopping before the first position whose output is learnt.

    Position t predicts token t+1, so the prefix ends at the earliest t with labels[t+1] set:
    every supervised prediction then comes from the per-row part of the forward pass.
    """
    first = items[0].input_ids
    limit = min(len(e.input_ids) - 1 for e in items)
    for e in items:
        sup = next((t - 1 for t, x in enumerate(e.labels) if x != IGNORE and t > 0), limit)
        limit = min(limit, sup)
    p = 0
    while p < limit and all(e.input_ids[p] == first[p] for e in items):
        p += 1
    return p
