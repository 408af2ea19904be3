#!/usr/bin/env bash
# Regenerates tests/fixtures/moby-tiny/ (the pretrained tiny model the quantization and training
# tests start from): 100 AdamW steps on Moby Dick from the seed, under the prebuilt haswell CPU
# variant (AVX2, which every x86-64 machine of this project has), f16 weights. Run after changing
# the recipe in tests/helpers/pretrained.ts, then bump its RECIPE and check the bounds of
# tests/train/train-types, tests/quant/verify and tests/quant/qlora under both variants.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run build >/dev/null
out=tests/fixtures/moby-tiny
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
QTUNE_ENGINE=prebuilt QTUNE_CPU_VARIANT=haswell QTUNE_THREADS="${QTUNE_THREADS:-2}" node --input-type=module -e "
import { pretrainTinyModel } from './dist/tests/helpers/pretrained.js';
const info = await pretrainTinyModel(process.argv[1]);
console.log(JSON.stringify(info));
" "$work/model"
mkdir -p "$out"
cp "$work/model/model.safetensors" "$work/model/pretrained.json" "$out/"
ls -l "$out"
