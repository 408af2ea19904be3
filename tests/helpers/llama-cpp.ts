/**
 * Test-only binding of the few llama.cpp functions needed to run a GGUF model with a LoRA adapter:
 * libllama from the same @node-llama-cpp package qtune loads ggml from. It links libggml-base and the
 * ggml registry by soname, so it shares the ones qtune already loaded (one registry, the CPU backend
 * qtune registered); call `getEngine()` first.
 *
 * `llama_model_params` and `llama_context_params` are passed by value but only ever taken from
 * `llama_*_default_params()` and handed back unchanged, so they are declared as opaque blobs of their
 * size in the pinned build (80 and 160 bytes, read off the disassembly of those two functions; a
 * struct over 16 bytes travels in memory on x86-64, so only the size has to be right).
 * `llama_batch` (56 bytes) is declared field by field as llama.h has it.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { getEngine } from '../../src/engine/library.js';
import { LIB_EXT, LIB_PREFIX, LLAMA_CPP_TAG } from '../../src/engine/paths.js';

koffi.opaque('qtune_llama_model');
koffi.opaque('qtune_llama_context');
koffi.opaque('qtune_llama_adapter_lora');
koffi.struct('qtune_llama_model_params', { raw: koffi.array('uint64', 10) });
koffi.struct('qtune_llama_context_params', { raw: koffi.array('uint64', 20) });
koffi.struct('qtune_llama_batch', {
  n_tokens: 'int32',
  token: 'int32 *',
  embd: 'float *',
  pos: 'int32 *',
  n_seq_id: 'int32 *',
  seq_id: 'void *',
  logits: 'int8 *',
});
const LogCallback = koffi.proto('void qtune_llama_log_cb(int level, const char *text, void *user)');

type Ptr = object;

interface LlamaApi {
  backend_init(): void;
  log_set(cb: unknown, user: null): void;
  model_default_params(): unknown;
  context_default_params(): unknown;
  model_load_from_file(file: string, params: unknown): Ptr | null;
  init_from_model(model: Ptr, params: unknown): Ptr | null;
  adapter_lora_init(model: Ptr, file: string): Ptr | null;
  set_adapters_lora(ctx: Ptr, adapters: Ptr[], n: number, scales: Float32Array): number;
  batch_get_one(tokens: Int32Array, n: number): unknown;
  decode(ctx: Ptr, batch: unknown): number;
  get_logits_ith(ctx: Ptr, i: number): Ptr | null;
  model_get_vocab(model: Ptr): Ptr;
  vocab_n_tokens(vocab: Ptr): number;
  free(ctx: Ptr): void;
  model_free(model: Ptr): void;
}

let api: LlamaApi | undefined;

/** libllama of the engine qtune loaded, or why llama.cpp cannot run in this process. */
function libllamaPath(): { file: string } | { reason: string } {
  const info = getEngine().info;
  if (info.kind !== 'prebuilt')
    return {
      reason: `qtune runs a ${info.kind} ggml build; libllama comes with the prebuilt package and must share its ggml (set QTUNE_ENGINE=prebuilt)`,
    };
  const file = path.join(info.path, `${LIB_PREFIX}llama.${LLAMA_CPP_TAG}${LIB_EXT}`);
  if (!existsSync(file)) return { reason: `${file} is not there (no libllama in the prebuilt package)` };
  return { file };
}

/** Null when llama.cpp can run here, else the reason (for `it(..., { skip })`). */
export function llamaCppUnavailable(): string | null {
  const p = libllamaPath();
  return 'reason' in p ? p.reason : null;
}

function bind(): LlamaApi {
  if (api !== undefined) return api;
  const p = libllamaPath();
  if ('reason' in p) throw new Error(`llama.cpp is unavailable: ${p.reason}`);
  const lib = koffi.load(p.file);
  const bound: LlamaApi = {
    backend_init: lib.func('void llama_backend_init(void)'),
    log_set: lib.func('void llama_log_set(qtune_llama_log_cb *cb, void *user)'),
    model_default_params: lib.func('qtune_llama_model_params llama_model_default_params(void)'),
    context_default_params: lib.func('qtune_llama_context_params llama_context_default_params(void)'),
    model_load_from_file: lib.func(
      'qtune_llama_model *llama_model_load_from_file(const char *path, qtune_llama_model_params params)',
    ),
    init_from_model: lib.func(
      'qtune_llama_context *llama_init_from_model(qtune_llama_model *model, qtune_llama_context_params params)',
    ),
    adapter_lora_init: lib.func(
      'qtune_llama_adapter_lora *llama_adapter_lora_init(qtune_llama_model *model, const char *path)',
    ),
    set_adapters_lora: lib.func(
      'int32 llama_set_adapters_lora(qtune_llama_context *ctx, qtune_llama_adapter_lora **adapters, size_t n, float *scales)',
    ),
    batch_get_one: lib.func('qtune_llama_batch llama_batch_get_one(int32 *tokens, int32 n)'),
    decode: lib.func('int32 llama_decode(qtune_llama_context *ctx, qtune_llama_batch batch)'),
    get_logits_ith: lib.func('float *llama_get_logits_ith(qtune_llama_context *ctx, int32 i)'),
    model_get_vocab: lib.func('const void *llama_model_get_vocab(qtune_llama_model *model)'),
    vocab_n_tokens: lib.func('int32 llama_vocab_n_tokens(const void *vocab)'),
    free: lib.func('void llama_free(qtune_llama_context *ctx)'),
    model_free: lib.func('void llama_model_free(qtune_llama_model *model)'),
  };
  bound.backend_init();
  api = bound;
  return bound;
}

/** Runs `fn` with llama.cpp's log lines collected (on this thread only), then restores stderr logging. */
function withLog<T>(fn: (lines: string[]) => T): T {
  const a = bind();
  const lines: string[] = [];
  const cb = koffi.register((level: number, text: string) => {
    if (level >= 2) lines.push(text.trimEnd());
  }, koffi.pointer(LogCallback));
  a.log_set(cb, null);
  try {
    return fn(lines);
  } finally {
    a.log_set(null, null);
    koffi.unregister(cb);
  }
}

/**
 * The logits llama.cpp computes for the last of `tokens`, with the GGUF model `modelFile` and, when
 * given, the LoRA adapter `adapterFile` applied at `scale` (1 = the adapter's own alpha/rank).
 */
export function llamaCppLastLogits(
  modelFile: string,
  tokens: readonly number[],
  adapterFile?: string,
  scale = 1,
): Float32Array {
  const a = bind();
  return withLog((log) => {
    const model = a.model_load_from_file(modelFile, a.model_default_params());
    if (model === null) throw new Error(`llama.cpp could not load ${modelFile}: ${log.join(' | ')}`);
    let ctx: Ptr | null = null;
    try {
      ctx = a.init_from_model(model, a.context_default_params());
      if (ctx === null) throw new Error(`llama.cpp could not create a context: ${log.join(' | ')}`);
      if (adapterFile !== undefined) {
        // the model owns its adapters and frees them with itself
        const lora = a.adapter_lora_init(model, adapterFile);
        if (lora === null)
          throw new Error(`llama.cpp could not load the adapter ${adapterFile}: ${log.join(' | ')}`);
        const rc = a.set_adapters_lora(ctx, [lora], 1, Float32Array.of(scale));
        if (rc !== 0) throw new Error(`llama_set_adapters_lora returned ${rc}`);
      }
      const ids = Int32Array.from(tokens);
      const rc = a.decode(ctx, a.batch_get_one(ids, ids.length));
      if (rc !== 0) throw new Error(`llama_decode returned ${rc}: ${log.join(' | ')}`);
      const ptr = a.get_logits_ith(ctx, -1);
      if (ptr === null) throw new Error('llama_get_logits_ith returned null');
      const n = a.vocab_n_tokens(a.model_get_vocab(model));
      return Float32Array.from(koffi.decode(ptr, 'float', n) as number[]);
    } finally {
      if (ctx !== null) a.free(ctx);
      a.model_free(model);
    }
  });
}
