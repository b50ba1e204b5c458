"""The benchmark harness itself: the GPU script's CPU path, the headline object, the RSS sampler.

No timed assertions: these check that the scripts run, write what the issue asks for, and
compute the headline ratios from the right fields.
"""

from __future__ import annotations

import json
import mmap
import subprocess
import time
from pathlib import Path

from bench import run as bench_run
from bench.bench_finetune import _RssSampler
from bench.common import cpu_info, host, library_versions

REPO = Path(__file__).resolve().parents[2]
HEADLINE_KEYS = {"inference_vs_llamacpp", "inference_vs_naive", "finetune_vs_trl",
                 "finetune_peak_memory_vs_trl", "ack_throughput_vs_bolt", "ack_p99_vs_bolt",
                 "queue_jobs_per_s_vs_celery"}


def test_gpu_sh_runs_on_cpu_quick(tmp_path: Path) -> None:
    out, device_out = tmp_path / "gpu.json", tmp_path / "out"
    device_out.mkdir()
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--device", "cpu", "--quick",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=240, env={"PATH": "/usr/bin:/bin", "OUT": str(device_out)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert json.loads((device_out / "gpu.json").read_text()) == r  # the device tool's $OUT
    assert r["device"] == "cpu" and r["quick"] is True
    (name, m), = r["models"].items()
    assert m["layers"] == 2 and m["params"] > 1_000_000
    inf = m["inference"]
    assert set(inf["sides"]) == {"tunebot", "hf_generate"}
    # Greedy on the same fp32 weights: the batched, prefix-cached path answers the same tokens.
    assert inf["identical_outputs"] == inf["cases"] == 8
    assert inf["ratio"]["min"] > 0 and inf["sides"]["tunebot"]["new_tokens_per_s"] > 0
    tr = m["training"]
    assert set(tr["sides"]) == {"tunebot", "peft_loop"}
    # Both sides train the same completion-only labels: their mean losses are close.
    lt, lp = (tr["sides"][k]["mean_loss_last_round"] for k in ("tunebot", "peft_loop"))
    assert abs(lt - lp) < 0.05 * max(lt, lp), (lt, lp)
    assert tr["sides"]["tunebot"]["examples_per_s"] > 0


def test_headline_from_side_by_side_results() -> None:
    results = {
        "llamacpp": {"ratio_vs_best": {"median": 1.6, "min": 1.5, "max": 1.7}},
        "inference": {"variants": {
            "one_at_a_time": {"seconds_per_repeat": [20.0, 30.0, 24.0]},
            "batched_prefix": {"seconds_per_repeat": [4.0, 5.0, 4.0]}}},
        "finetune": {"results": {
            "tunebot": {"examples_per_s_all": [6.0, 6.0],
                        "training_peak_increase_bytes_all": [100, 120]},
            "trl": {"examples_per_s_all": [2.0, 3.0],
                    "training_peak_increase_bytes_all": [400, 400]},
            "trl-nogc": {"examples_per_s_all": [3.0, 2.0],
                         "training_peak_increase_bytes_all": [200, 300]}}},
        "ack": {"headline": {"ratio": {"throughput": {"median": 9.0, "min": 9, "max": 9},
                                       "p99_ms": {"median": 9.0, "min": 9, "max": 9}}},
                "same_work": {"ratio": {"throughput": {"median": 1.1, "min": 1.0, "max": 1.2},
                                        "p99_ms": {"median": 0.9, "min": 0.8, "max": 1.0}}}},
        "queue": {"brokers": {"redis": {"ratio": {"jobs_per_s": {"median": 0.5, "min": 0.4,
                                                                  "max": 0.6}}}}},
    }
    h = bench_run.headline(results)
    assert set(h) == HEADLINE_KEYS
    assert h["inference_vs_llamacpp"] == {"median": 1.6, "min": 1.5, "max": 1.7}
    assert h["inference_vs_naive"] == {"min": 5.0, "median": 6.0, "max": 6.0}
    # TRL's best per round: round 1 trl-nogc (3.0 ex/s, 200 B), round 2 trl (3.0 ex/s, 400 B).
    assert h["finetune_vs_trl"] == {"min": 2.0, "median": 2.0, "max": 2.0}
    assert h["finetune_peak_memory_vs_trl"] == {"min": 0.3, "median": 0.4, "max": 0.5}
    # Against the bare app doing the same work, not the ack-only one.
    assert h["ack_throughput_vs_bolt"]["median"] == 1.1
    assert h["ack_p99_vs_bolt"]["median"] == 0.9
    assert h["queue_jobs_per_s_vs_celery"]["median"] == 0.5
    assert bench_run.headline({})["inference_vs_llamacpp"] is None
    assert "not measured" in bench_run.table({"headline": bench_run.headline({})})


def test_rss_sampler_sees_a_training_allocation() -> None:
    sampler = _RssSampler(every_s=0.002)
    time.sleep(0.05)
    start = time.perf_counter()
    # A fresh anonymous mapping: the allocator cannot hand back pages that are resident already
    # (after earlier tests in this process freed memory, a bytearray may reuse them).
    block = mmap.mmap(-1, 64 * 2**20)
    for i in range(0, len(block), 4096):  # touch every page so it is resident
        block[i] = 1
    touched = time.perf_counter()
    # Wait for the sampler to have looked a few times since (a loaded machine may not run its
    # thread within a fixed sleep).
    deadline = touched + 5
    while sum(1 for t, _ in list(sampler.samples) if t > touched) < 5 and \
            time.perf_counter() < deadline:
        time.sleep(0.01)
    end = time.perf_counter()
    block.close()
    sampler.stop()
    base, increase = sampler.training_increase(start, end)
    assert base > 0
    assert 48 * 2**20 < increase < 128 * 2**20


def test_results_record_machine_and_versions() -> None:
    info = host()
    for key in ("commit", "cpu_model", "cpu_flags", "cores", "versions", "load_average"):
        assert key in info
    assert cpu_info()["cores"] and isinstance(cpu_info()["cpu_flags"], list)
    assert library_versions()["torch"]


def test_llamacpp_headline_is_best_config_at_equal_accuracy() -> None:
    from bench.bench_llamacpp import summarise, sweep

    right = ["positive", "negative"] * 5
    wrong = ["negative"] * 10  # 50% accuracy
    times = {"tunebot": [2.0, 2.2, 1.8], "q4_1 np=16 b=2048 ub=512": [3.0, 3.0, 3.0],
             "f32 np=16 b=2048 ub=512": [5.0, 4.4, 4.5], "f32 np=8 b=512 ub=128": [6.0, 6, 6]}
    texts = {"tunebot": right, "q4_1 np=16 b=2048 ub=512": wrong,
             "f32 np=16 b=2048 ub=512": right, "f32 np=8 b=512 ub=128": right}

    def score(t: list[str]) -> float:
        return sum(a == b for a, b in zip(t, right, strict=True)) / len(right)

    r = summarise(times, texts, score)
    # The fastest peer lost accuracy, so the headline compares with the fastest equal one.
    assert r["best_any_accuracy"] == "q4_1 np=16 b=2048 ub=512"
    assert r["best_equal_accuracy"] == "f32 np=16 b=2048 ub=512"
    assert r["ratio_vs_best"] == {"min": 2.0, "median": 2.5, "max": 2.5}
    assert r["configs"]["q4_1 np=16 b=2048 ub=512"]["equal_accuracy"] is False
    assert r["configs"]["f32 np=16 b=2048 ub=512"]["identical_to_tunebot"] == 10
    assert r["goal"]["met"] is False
    # The full sweep: Q4_1 and f32, three slot counts, both batch sizes on f32.
    full = sweep(quick=False)
    assert {c[0] for c in full} == {"q4_1", "f32"} and {c[1] for c in full} == {8, 16, 40}
    assert len(full) == len(set(full)) == 9


def test_llamacpp_bf16_side_and_peer(tmp_path: Path, monkeypatch) -> None:
    import bench.bench_llamacpp as lc

    right = ["positive", "negative"] * 5
    times = {"tunebot": [2.0, 2.0, 2.0], "tunebot-bf16": [1.0, 1.25, 1.0],
             "f32 np=16 b=2048 ub=512": [5.0, 5.0, 5.0], "bf16 np=16 b=2048 ub=512": [4.0, 4, 4]}
    texts = dict.fromkeys(times, right)
    r = lc.summarise(times, texts, lambda t: 1.0)
    # tunebot's bf16 side is never a peer; the peer's bf16 GGUF is, and is the best here.
    assert r["best_equal_accuracy"] == "bf16 np=16 b=2048 ub=512"
    assert r["ratio_vs_best"]["median"] == 2.0
    assert r["ratio_bf16_vs_best"] == {"min": 3.2, "median": 4.0, "max": 4.0}
    # The bf16 GGUF joins the sweep only with a bf16 path here and the file built.
    monkeypatch.setattr(lc, "PEERS", tmp_path)
    assert not any(c[0] == "bf16" for c in lc.sweep(quick=False, bf16=True))
    (tmp_path / "smollm2-bf16.gguf").write_bytes(b"GGUF")
    assert {c for c in lc.sweep(quick=False, bf16=True) if c[0] == "bf16"} == set(lc.BF16_SWEEP)
    assert not any(c[0] == "bf16" for c in lc.sweep(quick=False, bf16=False))
    assert lc.parse_configs("bf16:8:512:128") == [("bf16", 8, 512, 128)]


def test_llamacpp_without_peers_names_the_make_target(tmp_path: Path, monkeypatch) -> None:
    import pytest

    from bench import bench_llamacpp

    monkeypatch.setattr(bench_llamacpp, "PEERS", tmp_path)
    with pytest.raises(SystemExit, match="make bench-peers"):
        bench_llamacpp.server_binary()


def test_llamacpp_configs_option() -> None:
    import pytest

    from bench.bench_llamacpp import parse_configs, sweep

    assert sweep(False, "f32:16:2048:512, q4_1:8:512:128") == [
        ("f32", 16, 2048, 512), ("q4_1", 8, 512, 128)]
    for bad, why in (("f16:16:2048:512", "q4_1, f32 or bf16"), ("f32:16:2048", "MODEL:SLOTS"),
                     ("f32:x:2048:512", "integers"), ("f32:16:256:512", "ubatch <= batch"),
                     ("f32:0:2048:512", "slots 1-256")):
        with pytest.raises(SystemExit, match=why):
            parse_configs(bad)


def test_the_committed_results_carry_the_headline_the_readme_quotes() -> None:
    """bench/results.json is a full run with issue #20's headline and where it ran; the
    README's benchmark figures are that file's (each ratio as median (min–max))."""
    import json

    root = Path(__file__).resolve().parents[2]
    results = json.loads((root / "bench" / "results.json").read_text())
    assert results["quick"] is False and len(results["commit"]) >= 7
    machine = results["machine"]
    assert machine["cpu_flags"] and machine["cores"] and machine["versions"]["torch"]
    assert results["load_average_at_start"] and results["load_average_at_end"]
    head = results["headline"]
    assert HEADLINE_KEYS <= set(head)
    readme = (root / "README.md").read_text()
    assert results["commit"] in readme
    for key in HEADLINE_KEYS:
        v = head[key]
        assert isinstance(v, dict), f"{key} was not measured"
        quoted = f"{v['median']:.2f}× ({v['min']:.2f}–{v['max']:.2f})"
        assert quoted in readme, f"README does not quote {key} = {quoted}"


def test_llamacpp_a_more_accurate_faster_peer_is_the_best() -> None:
    from bench.bench_llamacpp import summarise

    right = ["positive", "negative"] * 50
    tb = right[:-2] + ["neutral", "neutral"]  # tunebot 98%
    times = {"tunebot": [2.0, 2.0, 2.0], "bf16 np=16 b=512 ub=128": [3.0, 3.0, 3.0],
             "f32 np=16 b=512 ub=128": [4.0, 4.0, 4.0]}
    texts = {"tunebot": tb, "bf16 np=16 b=512 ub=128": right, "f32 np=16 b=512 ub=128": tb}

    def score(t: list[str]) -> float:
        return sum(a == b for a, b in zip(t, right, strict=True)) / len(right)

    r = summarise(times, texts, score)
    # 2 points more accurate is not "within 1 point", but it is no reason to leave it out.
    assert r["configs"]["bf16 np=16 b=512 ub=128"]["equal_accuracy"] is False
    assert r["configs"]["bf16 np=16 b=512 ub=128"]["eligible"] is True
    assert r["best_equal_accuracy"] == "bf16 np=16 b=512 ub=128"
    assert r["ratio_vs_best"]["median"] == 1.5


def test_llamacpp_reselect_matches_summarise() -> None:
    import copy

    from bench.bench_llamacpp import reselect, summarise

    right = ["positive", "negative"] * 50
    tb = right[:-2] + ["neutral", "neutral"]
    times = {"tunebot": [2.0, 2.5, 2.0], "tunebot-bf16": [1.0, 1.0, 1.25],
             "bf16 np=16 b=512 ub=128": [3.0, 3.0, 3.5], "f32 np=16 b=512 ub=128": [4.0, 4, 4]}
    texts = {"tunebot": tb, "tunebot-bf16": tb, "bf16 np=16 b=512 ub=128": right,
             "f32 np=16 b=512 ub=128": tb}

    def score(t: list[str]) -> float:
        return sum(a == b for a, b in zip(t, right, strict=True)) / len(right)

    fresh = summarise(times, texts, score)
    old = copy.deepcopy(fresh)
    old["best_equal_accuracy"] = "f32 np=16 b=512 ub=128"  # as an older rule chose
    old["ratio_vs_best"] = {"min": 0, "median": 0, "max": 0}
    again = reselect(old)
    for key in ("best_equal_accuracy", "ratio_vs_best", "ratio_bf16_vs_best", "goal"):
        assert again[key] == fresh[key]
