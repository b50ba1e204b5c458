"""The one interface every model backend implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class GenParams:
    """Generation parameters shared by every backend."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Generation:
    """One model answer with what it cost."""

    text: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    extra: dict[str, object] = field(default_factory=dict)


# Told as answers come in, a batch at a time: (indices into the prompts, their answers). It may
# raise (a cancelled job) to stop the rest.
OnBatch = Callable[[list[int], list[Generation]], None]


class Backend(Protocol):
    """A model that turns chat prompts into answers, batched."""

    name: str

    def generate(self, prompts: list[list[Message]], params: GenParams, *,
                 on_batch: OnBatch | None = None) -> list[Generation]:
        """Answer each prompt (a list of chat messages), in order; on_batch hears each batch
        as it finishes, so a caller can give every prompt at once and still report progress."""
        ...
