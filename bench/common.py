"""What the service benchmarks share: percentiles, min/median/max, scratch PostgreSQL and Redis."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379"
# Tests take Redis databases 1..14 (by pid); the benchmarks keep to 15 and flush only it.
REDIS_DB = 15


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def spread(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """min / median / max of repeated measurements."""
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (the CPU is shared: read the numbers with these)."""
    return [round(x, 2) for x in os.getloadavg()]


def commit() -> str:
    """The code measured: HEAD, with "+dirty" when the packages have uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "tunebot", "bot", "workers")
                   else "")


# The CPU flags that decide which kernels run (fp32 FMA width, bf16/int8 paths).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16",
             "amx_int8", "asimd", "sve", "bf16", "i8mm")
LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "celery", "slack-bolt",
             "llama-cpp-python", "gguf")


def cpu_info() -> dict[str, object]:
    """CPU model, its ISA flags that matter here, and the core count, from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.machine()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return {"cpu_model": model, "cpu_flags": [f for f in ISA_FLAGS if f in flags],
            "cores": os.cpu_count()}


def peak_fp32_flops() -> dict[str, object]:
    """The machine's fp32 peak, from the detected ISA, core count and clock (/proc/cpuinfo).

    cores × GHz × FLOP/cycle, with FLOP/cycle = SIMD lanes (16 with AVX-512, 8 with AVX/AVX2,
    4 otherwise) × 2 (a fused multiply-add is two FLOPs, when FMA is there) × 2 FMA pipes per
    core (every x86 server core of the last years). The clock read is the current one, not the
    boost clock: the fraction of peak is an estimate, recorded with its inputs.
    """
    info = cpu_info()
    flags = set(info["cpu_flags"])  # type: ignore[call-overload]
    lanes = 16 if "avx512f" in flags else 8 if flags & {"avx", "avx2"} else 4
    per_cycle = lanes * (2 if flags & {"fma", "avx512f"} else 1) * 2
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    except (OSError, ValueError):
        pass
    cores = int(info["cores"] or 1)  # type: ignore[call-overload]
    return {"flops": cores * mhz * 1e6 * per_cycle if mhz else None, "cores": cores,
            "ghz": round(mhz / 1000, 3), "flop_per_cycle_per_core": per_cycle,
            "bf16_hardware": bool(flags & {"avx512_bf16", "amx_bf16"})}


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries whose speed is measured (None: not installed).

    llama.cpp's server version is in the llama.cpp benchmark's own JSON (`llama_server`).
    """
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    peers = Path(__file__).resolve().parent.parent / "var" / "peers" / "VERSION.json"
    if peers.is_file():
        import json

        try:
            info = json.loads(peers.read_text())
            out["llama.cpp"] = " ".join([str(info.get("sdist", "")),
                                         *map(str, info.get("llama_server_version", []))])
        except ValueError:
            pass
    return out


def host() -> dict[str, object]:
    """Where and on what this ran: commit, CPU model and flags, cores, versions, load average."""
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            **cpu_info(), "python": platform.python_version(), "commit": commit(),
            "versions": library_versions(), "load_average": load_average(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60, proc=None) -> None:  # type: ignore[no-untyped-def]
    """Block until something listens on 127.0.0.1:port (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout:.0f} s")


@contextmanager
def pg_database(prefix: str = "tunebot_bench") -> Iterator[str]:
    """A fresh, empty PostgreSQL database (SQLAlchemy URL), dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_url() -> str:
    """The benchmarks' Redis database, flushed; raises if Redis is not answering."""
    import redis

    url = f"{REDIS}/{REDIS_DB}"
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    client.ping()
    client.flushdb()
    return url


def flush_redis(url: str) -> None:
    """Empty the benchmarks' Redis database between runs."""
    import redis

    redis.Redis.from_url(url).flushdb()


def as_utc(ts: datetime) -> float:
    """POSIX seconds of a stored timestamp (SQLite hands back naive UTC datetimes)."""
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
