#!/usr/bin/env bash
# Build the benchmark's peers once, cached under var/peers/ (`make bench-peers`):
#   var/peers/llama-server         llama.cpp's server, built from the llama.cpp source that the
#                                  llama-cpp-python sdist vendors (vendor/llama.cpp)
#   var/peers/llama.cpp/           that source tree (convert_hf_to_gguf.py comes from it)
#   var/peers/smollm2-f32.gguf     an f32 GGUF converted from the same weights as tunebot's
#                                  (the fp32 safetensors that workers/backends/gguf_cache.py
#                                  dequantises from the bundled Q4_1 GGUF)
#   var/peers/smollm2-bf16.gguf    the same weights in bf16 (tunebot's bf16 setting's peer)
#   var/peers/VERSION.json         what was built, from what
# Re-running does nothing when everything is there. Portable build (-DGGML_NATIVE=OFF): a native
# build died with "Illegal instruction" on the machine of issue #20. A portable build alone
# would be SSE-only, an unfair peer; so the instruction sets this CPU reports in /proc/cpuinfo
# (AVX, AVX2, FMA, F16C, BMI2, AVX-512 and its VNNI/BF16, AMX) are switched on one by one,
# never -march=native. Set PEERS_JOBS (default 2) and PEERS_NICE (default 15).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
PEERS="$ROOT/var/peers"
JOBS="${PEERS_JOBS:-2}"
NICE="${PEERS_NICE:-15}"
mkdir -p "$PEERS"
cd "$PEERS"

SDIST="$(ls "$ROOT"/var/llama_cpp_python-*.tar.gz 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$SDIST" ]; then
    "$ROOT/.venv/bin/pip" download -q --no-deps --no-binary :all: llama-cpp-python -d "$ROOT/var"
    SDIST="$(ls "$ROOT"/var/llama_cpp_python-*.tar.gz | sort -V | tail -1)"
fi
SDIST_NAME="$(basename "$SDIST" .tar.gz)"

if [ ! -f llama.cpp/CMakeLists.txt ]; then
    rm -rf llama.cpp "$SDIST_NAME"
    tar -xzf "$SDIST" "$SDIST_NAME/vendor/llama.cpp"
    mv "$SDIST_NAME/vendor/llama.cpp" llama.cpp
    rm -rf "$SDIST_NAME"
fi

ISA_FLAGS=()
CPU_FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 \
            avx512_vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 \
            avx_vnni:AVX_VNNI amx_tile:AMX_TILE amx_int8:AMX_INT8 amx_bf16:AMX_BF16; do
    case "$CPU_FLAGS" in *" ${pair%%:*} "*) ISA_FLAGS+=("-DGGML_${pair##*:}=ON") ;; esac
done
if [ ! -x llama-server ]; then
    nice -n "$NICE" cmake -S llama.cpp -B llama.cpp/build -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=OFF "${ISA_FLAGS[@]}" -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=ON >cmake-configure.log 2>&1 \
        || { tail -40 cmake-configure.log; exit 1; }
    nice -n "$NICE" cmake --build llama.cpp/build --target llama-server -j"$JOBS" \
        >cmake-build.log 2>&1 || { tail -40 cmake-build.log; exit 1; }
    cp llama.cpp/build/bin/llama-server llama-server.tmp && mv llama-server.tmp llama-server
    printf '%s\n' "${ISA_FLAGS[@]}" >isa-flags.txt
fi

if [ ! -f smollm2-f32.gguf ]; then
    HF_DIR="$(cd "$ROOT" && "$PY" - <<'EOF'
from tunebot.settings import Settings
from workers.backends.gguf_cache import converted_dir
print(converted_dir(Settings().models_dir).resolve())
EOF
)"
    # convert_hf_to_gguf.py imports the gguf-py next to it (the same tree as the server). It
    # imports sentencepiece before it finds there is no tokenizer.model (SmolLM2's tokenizer is
    # BPE, read from tokenizer.json): without the package, a stand-in that is never called.
    STUB="$PEERS/pystub"
    if ! "$PY" -c 'import sentencepiece' 2>/dev/null; then
        mkdir -p "$STUB"
        printf '%s\n' '"""Stand-in: no tokenizer.model is read for a BPE model."""' '' \
            'class SentencePieceProcessor:' '    def __init__(self, *a, **k):' \
            '        raise FileNotFoundError("sentencepiece is not installed")' \
            >"$STUB/sentencepiece.py"
    fi
    PYTHONPATH="$PEERS/llama.cpp/gguf-py:$STUB" nice -n "$NICE" "$PY" llama.cpp/convert_hf_to_gguf.py \
        "$HF_DIR" --outtype f32 --outfile smollm2-f32.gguf.tmp >convert.log 2>&1 \
        || { tail -30 convert.log; exit 1; }
    mv smollm2-f32.gguf.tmp smollm2-f32.gguf
fi

# bf16 GGUF of the same weights: tunebot's TUNEBOT_CPU_PRECISION=bf16 setting has a peer in the
# same precision (llama.cpp's AVX512-BF16 kernels are switched on above where the CPU has them).
if [ ! -f smollm2-bf16.gguf ]; then
    HF_DIR="$(cd "$ROOT" && "$PY" -c 'from tunebot.settings import Settings
from workers.backends.gguf_cache import converted_dir
print(converted_dir(Settings().models_dir).resolve())')"
    PYTHONPATH="$PEERS/llama.cpp/gguf-py:$PEERS/pystub" nice -n "$NICE" "$PY" \
        llama.cpp/convert_hf_to_gguf.py "$HF_DIR" --outtype bf16 \
        --outfile smollm2-bf16.gguf.tmp >convert-bf16.log 2>&1 \
        || { tail -30 convert-bf16.log; exit 1; }
    mv smollm2-bf16.gguf.tmp smollm2-bf16.gguf
fi

"$PY" - "$SDIST_NAME" <<'EOF'
import json, subprocess, sys
out = subprocess.run(["./llama-server", "--version"], capture_output=True, text=True)
text = (out.stdout + out.stderr).strip()
json.dump({"sdist": sys.argv[1], "llama_server_version": text.splitlines()[-2:] if text else []},
          open("VERSION.json", "w"), indent=1)
EOF
echo "peers ready in $PEERS"
