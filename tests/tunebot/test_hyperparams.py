"""Fine-tune hyperparameters: each rejection names the allowed range; auto resolution."""

import pytest

from tunebot import hyperparams as hp
from tunebot.errors import UserError


def test_nothing_given_is_all_auto_with_defaults_for_the_rest():
    v = hp.validate({})
    assert set(v) == set(hp.KEYS)
    assert v["lr"] == "auto" and v["target_modules"] == "auto"
    assert v["prompt"] is None and v["name"] is None


def test_values_are_converted():
    v = hp.validate({"epochs": "4", "lr": "3e-4", "lora_dropout": "0", "target_modules":
                     "q_proj, v_proj,q_proj", "truncate": "ok", "template": "full",
                     "prompt": "triage@3", "name": "triage-ft", "seed": "7", "val_split": "0.2",
                     "kfold": "auto"})
    assert v["epochs"] == 4 and isinstance(v["epochs"], int)
    assert v["lr"] == pytest.approx(3e-4)
    assert v["lora_dropout"] == 0.0
    assert v["target_modules"] == ["q_proj", "v_proj"]
    assert (v["truncate"], v["template"], v["prompt"], v["name"]) == \
        ("ok", "full", "triage@3", "triage-ft")
    assert v["val_split"] == 0.2 and v["kfold"] == "auto"
    assert hp.validate({"target_modules": "all-linear"})["target_modules"] == "all-linear"


def test_the_documented_error_text():
    with pytest.raises(UserError) as e:
        hp.validate({"lr": "3"})
    assert str(e.value) == "lr must be between 1e-06 and 0.01 (got 3)"
    assert e.value.usage == "/finetune start M on DATASET [lr=…]"


def test_unknown_key_lists_every_allowed_key_and_suggests():
    with pytest.raises(UserError) as e:
        hp.validate({"lrate": "0.1"})
    msg = str(e.value)
    assert msg.startswith("unknown hyperparameter lrate (allowed: epochs, lr, batch_size, ")
    assert msg.endswith("; did you mean lr?")
    for key in hp.KEYS:
        assert key in msg
    with pytest.raises(UserError) as e:
        hp.validate({"lora_rank": "8"})
    assert str(e.value).endswith("did you mean lora_r?")
    with pytest.raises(UserError) as e:
        hp.validate({"zzz": "1"})
    assert "did you mean" not in str(e.value)


REJECTED = [
    ("epochs", "0", "between 1 and 25"), ("epochs", "26", "between 1 and 25"),
    ("epochs", "2.5", "an integer between 1 and 25"),
    ("lr", "0", "between 1e-06 and 0.01"), ("lr", "0.5", "between 1e-06 and 0.01"),
    ("lr", "fast", "a number between 1e-06 and 0.01"), ("lr", "nan", "between 1e-06 and 0.01"),
    ("batch_size", "0", "between 1 and 256"), ("batch_size", "257", "between 1 and 256"),
    ("grad_accum", "0", "between 1 and 64"), ("grad_accum", "65", "between 1 and 64"),
    ("max_seq_len", "8", "between 16 and 32768"), ("max_seq_len", "40000", "between 16 and 32768"),
    ("lora_r", "0", "between 1 and 256"), ("lora_r", "512", "between 1 and 256"),
    ("lora_alpha", "0", "between 1 and 1024"), ("lora_alpha", "2048", "between 1 and 1024"),
    ("lora_dropout", "-0.1", "between 0 and 0.5"), ("lora_dropout", "0.6", "between 0 and 0.5"),
    ("weight_decay", "0.5", "between 0 and 0.3"), ("weight_decay", "-1", "between 0 and 0.3"),
    ("warmup_ratio", "0.9", "between 0 and 0.5"), ("warmup_ratio", "-0.1", "between 0 and 0.5"),
    ("patience", "0", "between 1 and 20"), ("patience", "21", "between 1 and 20"),
    ("eval_every", "0", "between 1 and 10000"), ("eval_every", "10001", "between 1 and 10000"),
    ("seed", "-1", "between 0 and 4.29497e+09"), ("seed", "x", "an integer between 0"),
    ("val_split", "0.01", "between 0.05 and 0.5"), ("val_split", "0.6", "between 0.05 and 0.5"),
    ("kfold", "1", "between 2 and 10"), ("kfold", "11", "between 2 and 10"),
    ("truncate", "maybe", "one of refuse, ok"), ("template", "long", "one of minimal, full"),
    ("target_modules", "q_proj;rm -rf", "all-linear, or auto"),
    ("target_modules", ",", "names of the model's linear layers"),
    ("prompt", "Bad Name", "not a valid reference"), ("name", "../etc", "not a valid model name"),
]


@pytest.mark.parametrize(("key", "raw", "expected"), REJECTED,
                         ids=[f"{k}={r}" for k, r, _ in REJECTED])
def test_each_rejection_names_the_allowed_values(key, raw, expected):
    with pytest.raises(UserError) as e:
        hp.validate({key: raw})
    assert expected in str(e.value)
    assert e.value.usage is not None


def test_every_key_has_a_rejection_case():
    assert {k for k, _, _ in REJECTED} == set(hp.KEYS)


def test_auto_epochs_aims_for_three_within_the_example_epoch_window():
    assert hp.auto_epochs(200) == 3  # 600 example-epochs: inside 100–25,000
    assert hp.auto_epochs(20) == 5  # 3 × 20 = 60 < 100 → ceil(100 / 20)
    assert hp.auto_epochs(3) == 25  # would need 34: capped at the range's 25
    assert hp.auto_epochs(10_000) == 2  # 30,000 > 25,000 → 25,000 // 10,000
    assert hp.auto_epochs(100_000) == 1


def test_auto_max_seq_len_rounds_p99_up_to_a_multiple_of_8():
    assert hp.auto_max_seq_len(74) == 80
    assert hp.auto_max_seq_len(80) == 80
    assert hp.auto_max_seq_len(3) == 16
    assert hp.auto_max_seq_len(10**6) == 32768


def test_resolve_auto_fills_the_table():
    r = hp.resolve_auto(hp.validate({}), n_examples=216, length_p99=74)
    assert r["epochs"] == 3 and r["lr"] == 2e-4 and r["grad_accum"] == 1
    assert r["batch_size"] == 16 and r["max_seq_len"] == 80
    assert (r["lora_r"], r["lora_alpha"], r["lora_dropout"]) == (16, 32, 0.05)
    assert (r["weight_decay"], r["warmup_ratio"], r["patience"], r["seed"]) == (0.0, 0.03, 3, 42)
    # 216 / 16 → 14 steps an epoch, 42 in all: an evaluation about every 4 steps (10 in a run)
    assert r["eval_every"] == 4
    assert r["target_modules"] == "auto" and r["val_split"] == "auto" and r["kfold"] is None
    assert r["truncate"] == "refuse" and r["template"] == "minimal"


def test_resolve_auto_keeps_what_was_given():
    given = hp.validate({"epochs": "2", "batch_size": "4", "eval_every": "7", "lr": "1e-3"})
    r = hp.resolve_auto(given, n_examples=100, length_p99=30)
    assert (r["epochs"], r["batch_size"], r["eval_every"], r["lr"]) == (2, 4, 7, 1e-3)


def test_auto_batch_size_is_the_largest_that_fits_memory_and_leaves_steps():
    assert hp.auto_batch_size(n_examples=20, seq_len=64, lora_r=16, memory_budget_bytes=None,
                              model_params=None) == 4  # ≥ 4 steps an epoch
    shape = {"hidden_size": 576, "num_layers": 30}
    args = {"n_examples": 1000, "seq_len": 512, "lora_r": 16, "model_params": 134_515_008,
            "model_shape": shape}
    need = {bs: hp.peak_memory_bytes(model_params=134_515_008, batch_size=bs, seq_len=512,
                                     lora_params=hp.lora_param_count(hidden_size=576,
                                                                     num_layers=30, r=16),
                                     hidden_size=576, num_layers=30) for bs in (16, 8, 4)}
    assert hp.auto_batch_size(memory_budget_bytes=need[16], **args) == 16
    assert hp.auto_batch_size(memory_budget_bytes=need[16] - 1, **args) == 8
    assert hp.auto_batch_size(memory_budget_bytes=need[4], **args) == 4
    assert hp.auto_batch_size(memory_budget_bytes=1, **args) == 1


def test_peak_memory_formula():
    # weights 4 B/param + LoRA 16 B/param + activations 24 × hidden × layers × tokens × 4 B
    got = hp.peak_memory_bytes(model_params=1000, batch_size=2, seq_len=10, lora_params=10,
                               hidden_size=8, num_layers=3, runtime_bytes=0)
    assert got == 4000 + 160 + 2 * 10 * 24 * 8 * 3 * 4
    ckpt = hp.peak_memory_bytes(model_params=1000, batch_size=2, seq_len=10, lora_params=10,
                                hidden_size=8, num_layers=3, runtime_bytes=0,
                                grad_checkpointing=True)
    assert ckpt == 4000 + 160 + 2 * 10 * (8 * 3 + 24 * 8) * 4
    assert ckpt < got


def test_steps_per_epoch_counts_partial_batches_and_windows():
    assert hp.steps_per_epoch(64, 8, 1) == 8
    assert hp.steps_per_epoch(65, 8, 1) == 9
    assert hp.steps_per_epoch(65, 8, 4) == 3


def test_auto_settings_take_enough_steps_at_a_learning_rate_for_the_model_size():
    # A starter training set on the bundled 135M model: 120 rows, 108 left after the
    # validation split, 7 steps an epoch.
    r = hp.resolve_auto(hp.validate({}), n_examples=120, length_p99=40, model_params=135_000_000)
    assert r["lr"] == 1e-3 and r["batch_size"] == 16 and hp.train_size(120, "auto") == 108
    steps = r["epochs"] * hp.steps_per_epoch(108, r["batch_size"], r["grad_accum"])
    assert r["epochs"] == 6 and steps >= hp.MIN_TOTAL_STEPS
    assert hp.auto_lr(1_700_000_000) == 5e-4 and hp.auto_lr(7_000_000_000) == 2e-4
    assert hp.auto_lr(70_000_000_000) == 1e-4 and hp.auto_lr(None) == 2e-4
    # Big data is not stretched; explicit values still win.
    big = hp.resolve_auto(hp.validate({}), n_examples=20_000, length_p99=40,
                          model_params=135_000_000)
    assert big["epochs"] == 1
    given = hp.resolve_auto(hp.validate({"epochs": "2", "lr": "3e-4"}), n_examples=108,
                            length_p99=40, model_params=135_000_000)
    assert (given["epochs"], given["lr"]) == (2, 3e-4)
