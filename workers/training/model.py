"""Loading the base model and putting LoRA on it; device, dtype and memory decisions."""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from tunebot.errors import UserError
from tunebot.hyperparams import ALL_LINEAR, AUTO, lora_param_count, peak_memory_bytes
from workers.training.config import TrainConfig

# Attention projections by architecture family, tried in order for target_modules=auto.
ATTENTION_PAIRS = (("q_proj", "v_proj"), ("query", "value"), ("c_attn",), ("query_key_value",),
                   ("qkv_proj",), ("Wqkv",))


def pick_device(config: TrainConfig) -> torch.device:
    """cuda when asked for or available (auto), else cpu."""
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it; fp32 on CPU (no fast bf16 matmul on most CPUs)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def linear_names(model: torch.nn.Module) -> list[str]:
    """The distinct last-component names of the model's linear layers (lm_head left out)."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}
    return sorted(names)


def resolve_targets(model: torch.nn.Module, spec: str | list[str]) -> str | list[str]:
    """target_modules for LoraConfig: auto → attention projections; names checked on the model."""
    available = linear_names(model)
    if spec == ALL_LINEAR:
        return ALL_LINEAR
    if spec == AUTO:
        for pair in ATTENTION_PAIRS:
            if all(p in available for p in pair):
                return list(pair)
        return ALL_LINEAR
    missing = [n for n in spec if n not in available]
    if missing:
        raise UserError(f"target_modules: this model has no linear layer named "
                        f"{', '.join(missing)} (it has: {', '.join(available)}, or all-linear)",
                        "/finetune start M on DATASET [target_modules=q_proj,v_proj]")
    return list(spec)


def memory_budget(config: TrainConfig, device: torch.device) -> int:
    """Bytes training may use: the configured budget, 90% of the GPU, or half the free RAM."""
    if config.memory_budget_bytes:
        return config.memory_budget_bytes
    if device.type == "cuda":
        return int(0.9 * torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return int(0.5 * psutil.virtual_memory().available)


def needs_checkpointing(config: TrainConfig, model: torch.nn.Module, device: torch.device,
                        dtype: torch.dtype) -> bool:
    """Whether activations must be recomputed in backward to fit the memory budget."""
    if config.gradient_checkpointing is not None:
        return config.gradient_checkpointing
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None)
    layers = getattr(cfg, "num_hidden_layers", None)
    params = sum(p.numel() for p in model.parameters())
    lora = lora_param_count(hidden_size=hidden, num_layers=layers, r=config.lora_r) \
        if hidden and layers else 0
    need = peak_memory_bytes(model_params=params, batch_size=config.batch_size,
                             seq_len=config.max_seq_len, lora_params=lora, hidden_size=hidden,
                             num_layers=layers, dtype_bytes=torch.finfo(dtype).bits // 8)
    return need > memory_budget(config, device)


def load_model(config: TrainConfig, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
    """(peft model on device, tokenizer, facts) with LoRA from the config's hyperparameters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = pick_dtype(device)
    tokenizer = AutoTokenizer.from_pretrained(config.model_dir)
    base = AutoModelForCausalLM.from_pretrained(config.model_dir, dtype=dtype)
    targets = resolve_targets(base, config.target_modules)
    grad_ckpt = needs_checkpointing(config, base, device, dtype)
    if grad_ckpt:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets, bias="none")
    model = get_peft_model(base, lora).to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bf16_feature = cpu_bf16_feature(config, device, dtype)
    if bf16_feature:
        frozen_linears_to_bf16(model)
    facts = {"device": device.type, "dtype": str(dtype).removeprefix("torch."),
             "autocast": "bfloat16" if bf16_feature else None,
             **({"cpu_bf16": f"{bf16_feature}: frozen base weights in bf16, LoRA in fp32, "
                             "bf16 autocast"} if bf16_feature else {}),
             "target_modules": targets, "gradient_checkpointing": grad_ckpt,
             "trainable_params": trainable,
             "model_params": sum(p.numel() for p in model.parameters())}
    return model, tokenizer, facts


def cpu_bf16_feature(config: TrainConfig, device: torch.device, dtype: torch.dtype) -> str | None:
    """The CPU feature that makes bf16 training worth it here (None: train in fp32).

    On a CPU that multiplies bf16 natively (AVX-512-BF16 or AMX, from the CPU's flags) the
    matmuls run about 1.4-2x faster in bf16 and the frozen weights take half the memory;
    elsewhere bf16 is emulated and slower, so fp32 stays.
    """
    if device.type != "cpu" or dtype != torch.float32 or not config.cpu_bf16:
        return None
    from workers.backends.cpu_linear import bf16_native

    return bf16_native()


def frozen_linears_to_bf16(model: torch.nn.Module) -> int:
    """Store the frozen weights of the model's linear layers in bf16, in place; returns how many.

    Trainable weights (LoRA's) stay fp32, as do the output layer and anything sharing a weight
    with the embeddings (tied lm_head): logits and embeddings keep their precision, and the
    optimizer only ever sees fp32. Training then runs under bf16 autocast (recipe.py).
    """
    # transformers/peft methods that nn.Module does not declare
    wrapped: Any = model
    base: Any = wrapped.get_base_model() if hasattr(wrapped, "get_base_model") else wrapped
    # the output layer's weight and the embeddings' (one tensor when tied) stay fp32
    keep = {id(m.weight) for m in (base.get_output_embeddings(), base.get_input_embeddings())
            if m is not None}
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight
            if w.requires_grad or id(w) in keep or w.dtype != torch.float32:
                continue
            module.weight = torch.nn.Parameter(w.detach().to(torch.bfloat16),
                                               requires_grad=False)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias = torch.nn.Parameter(module.bias.detach().to(torch.bfloat16),
                                                 requires_grad=False)
            n += 1
    return n
