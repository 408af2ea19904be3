#!/usr/bin/env bash
# Runs a subset of the suite on node-llama-cpp 3.21.1, the release macOS and Windows get (Linux runs
# 3.22.1, docs/engine.md says why), with its linux-x64 and linux-x64-vulkan packages installed into a
# temporary folder and loaded from there (QTUNE_ENGINE_PACKAGES): the struct layouts, the ops' and the
# loss's gradients on the CPU and on software Vulkan (3.21.1's Vulkan aborts on a misaligned get_rows
# index: the loss's chunks of 1 and 3 rows are the case), and one short training run on each.
# CI runs it after `npm test`; it expects dist/ built. About a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
release=3.21.1
if [ "$(node -p 'process.platform + "-" + process.arch')" != "linux-x64" ]; then
  echo "== test-release: skipped: the $release packages it installs are linux-x64 ones"
  exit 0
fi
dir="$(mktemp -d "${TMPDIR:-/tmp}/qtune-release-XXXXXX")"
trap 'rm -rf "$dir"' EXIT
echo "== node-llama-cpp $release's linux-x64 and linux-x64-vulkan packages into $dir"
npm install --no-save --no-audit --no-fund --prefix "$dir" \
  "@node-llama-cpp/linux-x64@$release" "@node-llama-cpp/linux-x64-vulkan@$release" >/dev/null
export QTUNE_ENGINE_PACKAGES="$dir" QTUNE_THREADS="${QTUNE_THREADS:-1}" QTUNE_QUANT_COMPUTE_DTYPE="${QTUNE_QUANT_COMPUTE_DTYPE-f32}"
node bin/qtune.js engine info | grep -E '^(engine|release|gpu backend):'
node bin/qtune.js engine info --json | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const r=JSON.parse(s).release;if(!r.endsWith('@$release')){console.error('test-release: loaded '+r+', not $release');process.exit(1)}})"

echo "== layouts, gradients (CPU and Vulkan0) and the fused loss on $release"
bash scripts/run-tests.sh dist/tests/engine/layout.test.js dist/tests/tensor/gradcheck.test.js \
  dist/tests/tensor/linear-cross-entropy.test.js

echo "== a short training run (6 steps, full fine-tuning, checked against float64 references) on CPU and Vulkan0 on $release"
node --test --test-name-pattern="^adamw with a linear schedule on" dist/tests/integration/training.test.js | grep -E '^# (tests|pass|fail)|^not ok|^ *(not )?ok .*adamw'
