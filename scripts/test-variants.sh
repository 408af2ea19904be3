#!/usr/bin/env bash
# Runs the numeric suites (ops and gradients, models and parity, quantization, training, data
# parallelism) under the prebuilt haswell CPU variant (AVX2) when the engine that `npm test` used is
# another one — the AVX-512 variants round differently, so a bound fitted under one must hold under
# the other. CI runs it after `npm test`; it expects dist/ built. Prints why when it does not run.
set -u
cd "$(dirname "$0")/.."
if [ "$(node -p process.arch)" != "x64" ]; then
  echo "== test-variants: skipped: the prebuilt CPU variants are x86-64 ones (this is $(node -p process.arch))"
  exit 0
fi
export QTUNE_ENGINE="${QTUNE_ENGINE-prebuilt}" # the engine npm test used (scripts/run-tests.sh)
used="$(node bin/qtune.js engine info --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);console.log(j.kind==="native"?"native":j.cpuVariant)})')"
if [ "$used" = "haswell" ]; then
  echo "== test-variants: skipped: npm test already ran the haswell (AVX2) variant, the best this CPU has"
  exit 0
fi
echo "== numeric suites under QTUNE_CPU_VARIANT=haswell, CPU only (npm test ran: $used)"
QTUNE_CPU_VARIANT=haswell QTUNE_TEST_DEVICES=CPU bash scripts/run-tests.sh \
  dist/tests/tensor/ dist/tests/models/ dist/tests/quant/ dist/tests/train/ dist/tests/dist/
