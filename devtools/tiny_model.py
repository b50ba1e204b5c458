"""A tiny Llama-architecture chat model built from a config: random weights, a real tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<pad>", "<unk>"]
_WORDS = (
    "the a an and or but not is are was were be been have has had do does did will would can "
    "could should may might must shall this that these those it its they them their we us our "
    "you your he she his her i me my good bad great terrible awful love hate like dislike happy "
    "sad angry calm fast slow broken works working fine okay excellent poor product service "
    "order delivery refund price battery screen phone food staff room hotel movie book music "
    "positive negative neutral classify sentiment review answer question label text system "
    "user assistant yes no maybe very really quite too much many more most less least one two "
    "three four five six seven eight nine ten hello thanks please sorry again never always "
    "sometimes today yesterday tomorrow week month year day night morning evening time people"
)


def _corpus() -> list[str]:
    words = _WORDS.split()
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    lines += [w.capitalize() + "." for w in words]
    lines.append("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,:;!?'\"-()\n")
    return lines * 3


def build_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer on a built-in corpus, with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<pad>", unk_token="<unk>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Llama causal LM (safetensors) and its tokenizer into out_dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        # A wide init makes the logits peaked, so greedy argmax is stable under fp32 noise.
        initializer_range=0.3, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
