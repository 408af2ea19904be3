/**
 * `qtune engine build --cuda`: the cmake arguments it configures with, and the one-line typed errors
 * it stops with before any download or compile (no nvcc, a wrong source folder, a bad --cuda-arch).
 * The CUDA build itself needs a GPU machine: scripts/device-cuda-check.sh runs it there.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { buildLibraries, cmakeFlags } from '../../src/engine/native-build.js';
import { QtuneError } from '../../src/errors.js';
import { qtune } from '../helpers/cli.js';

describe('CUDA engine build', () => {
  const cache = mkdtempSync(path.join(os.tmpdir(), 'qtune-cuda-'));
  after(() => rmSync(cache, { recursive: true, force: true }));

  it('--cuda adds the CUDA backend to the CPU flags, for the GPUs present unless told otherwise', () => {
    const cpu = cmakeFlags();
    assert.ok(cpu.includes('-DGGML_NATIVE=ON') && cpu.includes('-DBUILD_SHARED_LIBS=ON'));
    assert.ok(!cpu.some((f) => f.includes('CUDA')), cpu.join(' '));

    const cuda = cmakeFlags({ cuda: true, nvcc: '/opt/cuda/bin/nvcc' });
    assert.deepEqual(cuda.slice(0, cpu.length), cpu);
    assert.deepEqual(cuda.slice(cpu.length), [
      '-DGGML_CUDA=ON',
      '-DCMAKE_CUDA_COMPILER=/opt/cuda/bin/nvcc',
      '-DCMAKE_CUDA_ARCHITECTURES=native',
      '-DGGML_CUDA_FA=OFF',
      '-DGGML_CUDA_NCCL=OFF',
    ]);
    assert.ok(cmakeFlags({ cuda: true, cudaArch: '86;89' }).includes('-DCMAKE_CUDA_ARCHITECTURES=86;89'));
    assert.ok(
      cmakeFlags({ cuda: true, cudaArch: '90a-real' }).includes('-DCMAKE_CUDA_ARCHITECTURES=90a-real'),
    );
    assert.throws(
      () => cmakeFlags({ cuda: true, cudaArch: '9.0' }),
      (e) => e instanceof QtuneError && e.code === 'INVALID_ARGUMENT' && /--cuda-arch 9\.0/.test(e.message),
    );
    assert.deepEqual(buildLibraries(true), [
      'libggml-base.so',
      'libggml.so',
      'libggml-cpu.so',
      'libggml-cuda.so',
    ]);
    assert.deepEqual(buildLibraries(false), ['libggml-base.so', 'libggml.so', 'libggml-cpu.so']);
  });

  const oneLineError = (r: { code: number; stdout: string; stderr: string }, code: number, re: RegExp) => {
    assert.equal(r.code, code, r.stdout + r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /^qtune: error: /);
    assert.match(lines[0]!, re);
    assert.doesNotMatch(r.stderr, /\n\s+at /); // no stack trace
  };
  const nothingWritten = () =>
    assert.ok(
      !existsSync(path.join(cache, 'engine')) && readdirSync(cache).length === 0,
      'left files in the cache',
    );

  it('without nvcc it stops with one typed line and writes nothing', () => {
    const r = qtune(['engine', 'build', '--cuda'], {
      QTUNE_CACHE_DIR: cache,
      CUDACXX: path.join(cache, 'no-such-nvcc'),
    });
    oneLineError(r, 1, /the CUDA build needs nvcc, but CUDACXX=.*no-such-nvcc is not a working nvcc/);
    nothingWritten();
  });

  it(
    'without nvcc on PATH it says so',
    { skip: existsSync('/usr/local/cuda/bin/nvcc') && 'this machine has /usr/local/cuda/bin/nvcc' },
    () => {
      const r = qtune(['engine', 'build', '--cuda'], { QTUNE_CACHE_DIR: cache, PATH: cache, CUDACXX: '' });
      oneLineError(
        r,
        1,
        /needs nvcc \(the CUDA toolkit\), which is neither on PATH nor in \/usr\/local\/cuda\/bin/,
      );
      nothingWritten();
    },
  );

  it('rejects a source folder that is not llama.cpp, and --cuda-arch without --cuda', () => {
    const empty = mkdtempSync(path.join(os.tmpdir(), 'qtune-src-'));
    try {
      const r = qtune(['engine', 'build', '--source', empty], { QTUNE_CACHE_DIR: cache });
      oneLineError(r, 1, /is not a llama\.cpp source folder/);
      const env = qtune(['engine', 'build'], { QTUNE_CACHE_DIR: cache, QTUNE_LLAMA_CPP_SOURCE: empty });
      oneLineError(env, 1, /is not a llama\.cpp source folder/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
    oneLineError(
      qtune(['engine', 'build', '--cuda-arch', '90'], { QTUNE_CACHE_DIR: cache }),
      2,
      /--cuda-arch needs --cuda/,
    );
    nothingWritten();
  });
});
