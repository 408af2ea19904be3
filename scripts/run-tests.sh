#!/usr/bin/env bash
# npm test and npm run test:slow (QTUNE_SLOW=1): node's test runner over dist/tests/ (built first by
# npm), two files at a time. The console gets the spec reporter's output; tests/helpers/summary-reporter.ts
# writes dist/test-summary.txt (counts, every skipped test with its reason, failures, the slowest
# files), printed at the end, after the long log. The exit status is the test runner's.
# Arguments, if any, replace dist/tests/ (e.g. `bash scripts/run-tests.sh dist/tests/integration/`).
#
# QTUNE_THREADS defaults to 1 here: ggml's CPU threads spin at barriers, so two test files with two
# threads each on two cores wait on each other: on a busy 2-core machine the CPU half of
# tests/integration/training.test.ts took 3 s with one thread and 183 s with two.
set -u
cd "$(dirname "$0")/.."
export QTUNE_THREADS="${QTUNE_THREADS:-1}"
# QTUNE_ENGINE defaults to prebuilt here (set it, even to '', to choose): a computing command builds
# the native engine the first time it runs on a machine (src/engine/auto-build.ts), and a build in
# the middle of the suite would change the engine under the tests that follow. The native build and
# its automatic start are tested by tests/engine/native-build.test.ts in a temporary cache.
export QTUNE_ENGINE="${QTUNE_ENGINE-prebuilt}"
# A quantized base's input-gradient type is measured per machine (quant_compute_dtype: auto); the
# suite pins f32 so that no result depends on which machine measured what (tests/train/frozen.test.ts
# measures, and checks the bf16 path).
export QTUNE_QUANT_COMPUTE_DTYPE="${QTUNE_QUANT_COMPUTE_DTYPE-f32}"
rm -f dist/test-summary.txt
node --test --test-concurrency=2 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=./dist/tests/helpers/summary-reporter.js --test-reporter-destination=dist/test-summary.txt \
  "${@:-dist/tests/}"
status=$?
cat dist/test-summary.txt 2>/dev/null || echo "(no test summary: the test runner stopped before writing dist/test-summary.txt)"
exit $status
