/**
 * A Hugging Face `tokenizer.json` rebuilt from llama.cpp's tokenizer metadata (`tokenizer.ggml.*`),
 * for GGUF files that carry no `tokenizer.huggingface.json` (those written by llama.cpp's
 * convert_hf_to_gguf.py, ollama, LM Studio...).
 *
 * - `llama` (SentencePiece BPE: Llama 2, Mistral, TinyLlama): the merges are derived from the token
 *   scores as transformers' LlamaConverter derives them from tokenizer.model (every split of a piece
 *   into two pieces, pieces by score, highest first), with byte fallback, the `▁` space prefix
 *   (`tokenizer.ggml.add_space_prefix`, default true) and BOS as llama.cpp adds it.
 * - `gpt2` (byte-level BPE: Llama 3, Qwen2): the merges are stored; `tokenizer.ggml.pre` names the
 *   split pattern, and for `llama-bpe` whole words in the vocabulary skip the merges
 *   (`ignore_merges`), as in llama.cpp's llama-vocab.cpp.
 */
import { FormatError, QtuneError } from '../errors.js';
import { ggufGet, type GgufFile } from './gguf.js';

type Json = Record<string, unknown>;

/** llama.cpp's token types (`tokenizer.ggml.token_type`). */
const NORMAL = 1;
const UNKNOWN = 2;
const CONTROL = 3;
const USER_DEFINED = 4;
const UNUSED = 5;

const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** What llama.cpp does for each `tokenizer.ggml.pre` of a byte-level BPE vocabulary qtune reads. */
const BPE_PRE: Record<string, { split: string | null; ignoreMerges: boolean; addBos: boolean }> = {
  default: { split: null, ignoreMerges: false, addBos: false },
  'llama-bpe': { split: LLAMA3_SPLIT, ignoreMerges: true, addBos: true },
  llama3: { split: LLAMA3_SPLIT, ignoreMerges: true, addBos: true },
  'llama-v3': { split: LLAMA3_SPLIT, ignoreMerges: true, addBos: true },
  'smaug-bpe': { split: LLAMA3_SPLIT, ignoreMerges: false, addBos: false },
  dbrx: { split: LLAMA3_SPLIT, ignoreMerges: false, addBos: false },
  qwen2: {
    split:
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ignoreMerges: false,
    addBos: false,
  },
};

interface Vocabulary {
  tokens: string[];
  types: number[];
  bos: number | undefined;
  eos: number | undefined;
}

/** Added tokens (control, unknown and user-defined), as tokenizer.json lists them. */
function addedTokens(v: Vocabulary): Json[] {
  const added: Json[] = [];
  v.tokens.forEach((content, id) => {
    const t = v.types[id];
    if (t === CONTROL || t === UNKNOWN || t === USER_DEFINED)
      added.push({
        id,
        content,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: t !== USER_DEFINED,
      });
  });
  return added;
}

/** A TemplateProcessing that adds BOS and/or EOS, or null when neither is added. */
function template(v: Vocabulary, addBos: boolean, addEos: boolean): Json | null {
  const bos = addBos && v.bos !== undefined ? v.tokens[v.bos] : undefined;
  const eos = addEos && v.eos !== undefined ? v.tokens[v.eos] : undefined;
  if (bos === undefined && eos === undefined) return null;
  const special = (id: string) => ({ SpecialToken: { id, type_id: 0 } });
  const seq = (id: string, typeId: number) => ({ Sequence: { id, type_id: typeId } });
  const wrap = (body: Json[]) => [
    ...(bos === undefined ? [] : [special(bos)]),
    ...body,
    ...(eos === undefined ? [] : [special(eos)]),
  ];
  const specialTokens: Json = {};
  if (bos !== undefined) specialTokens[bos] = { id: bos, ids: [v.bos], tokens: [bos] };
  if (eos !== undefined) specialTokens[eos] = { id: eos, ids: [v.eos], tokens: [eos] };
  return {
    type: 'TemplateProcessing',
    single: wrap([seq('A', 0)]),
    pair: [...wrap([seq('A', 0)]), ...wrap([seq('B', 1)])],
    special_tokens: specialTokens,
  };
}

/** The vocabulary as tokenizer.json's model.vocab: the first id of each distinct string. */
function vocabObject(v: Vocabulary): Record<string, number> {
  const vocab: Record<string, number> = {};
  v.tokens.forEach((t, id) => {
    if (v.types[id] !== UNUSED && !Object.hasOwn(vocab, t)) vocab[t] = id;
  });
  return vocab;
}

const MAX_PIECE = 256;

/**
 * SentencePiece BPE merges from scores, as transformers' SentencePieceExtractor: for each normal
 * piece, every split into two pieces of the vocabulary (ordered by the left then the right piece's
 * id), all ordered by the piece's score, highest first (ties keep id order).
 */
export function spmMerges(
  tokens: readonly string[],
  types: readonly number[],
  scores: readonly number[],
): string[] {
  const ids = new Map<string, number>();
  tokens.forEach((t, id) => {
    if (types[id] !== UNUSED && !ids.has(t)) ids.set(t, id);
  });
  const merges: { pair: string; score: number }[] = [];
  tokens.forEach((piece, id) => {
    if (types[id] !== NORMAL || ids.get(piece) !== id) return;
    const chars = Array.from(piece); // code points, as Python slices the piece
    // sentencepiece's pieces are at most 16 characters (max_sentencepiece_length); a far longer one is
    // no merge result, and splitting it would take quadratic time
    if (chars.length > MAX_PIECE) return;
    const local: [number, number, string][] = [];
    for (let i = 1; i < chars.length; i++) {
      const left = chars.slice(0, i).join('');
      const right = chars.slice(i).join('');
      const l = ids.get(left);
      const r = ids.get(right);
      if (l !== undefined && r !== undefined) local.push([l, r, `${left} ${right}`]);
    }
    local.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    for (const [, , pair] of local) merges.push({ pair, score: scores[id] ?? 0 });
  });
  merges.sort((a, b) => b.score - a.score); // stable: ties keep their order
  return merges.map((m) => m.pair);
}

function spmJson(g: GgufFile, v: Vocabulary): Json {
  const scores = arrayOf(g, 'tokenizer.ggml.scores', 'number');
  if (scores === undefined || scores.length !== v.tokens.length)
    throw new QtuneError(
      'FORMAT',
      `${g.path}: tokenizer.ggml.scores has ${scores?.length ?? 0} entries for ${v.tokens.length} tokens`,
      { hint: "put the model's tokenizer.json beside the GGUF file, or convert the model again" },
    );
  const spacePrefix = ggufGet(g, 'tokenizer.ggml.add_space_prefix', 'boolean') ?? true;
  const unkId = ggufGet(g, 'tokenizer.ggml.unknown_token_id', 'number') ?? v.types.indexOf(UNKNOWN);
  const replace = { type: 'Replace', pattern: { String: ' ' }, content: '▁' };
  return {
    version: '1.0',
    added_tokens: addedTokens(v),
    normalizer: spacePrefix
      ? { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, replace] }
      : replace,
    pre_tokenizer: null,
    post_processor: template(
      v,
      ggufGet(g, 'tokenizer.ggml.add_bos_token', 'boolean') ?? true,
      ggufGet(g, 'tokenizer.ggml.add_eos_token', 'boolean') ?? false,
    ),
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        ...(spacePrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: unkId >= 0 ? (v.tokens[unkId] ?? null) : null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab: vocabObject(v),
      merges: spmMerges(v.tokens, v.types, scores),
    },
  };
}

function bpeJson(g: GgufFile, v: Vocabulary, merges: string[]): Json {
  const preName = ggufGet(g, 'tokenizer.ggml.pre', 'string') ?? 'default';
  const pre = BPE_PRE[preName];
  if (pre === undefined)
    throw new QtuneError(
      'NOT_FOUND',
      `${g.path}: tokenizer.ggml.pre = ${preName} is not one qtune rebuilds`,
      {
        hint: `put the model's tokenizer.json beside the GGUF file (qtune rebuilds ${Object.keys(BPE_PRE).join(', ')})`,
      },
    );
  const byteLevel = (useRegex: boolean) => ({
    type: 'ByteLevel',
    add_prefix_space: false,
    trim_offsets: true,
    use_regex: useRegex,
  });
  return {
    version: '1.0',
    added_tokens: addedTokens(v),
    normalizer: null,
    pre_tokenizer:
      pre.split === null
        ? byteLevel(true)
        : {
            type: 'Sequence',
            pretokenizers: [
              { type: 'Split', pattern: { Regex: pre.split }, behavior: 'Isolated', invert: false },
              byteLevel(false),
            ],
          },
    post_processor: template(
      v,
      ggufGet(g, 'tokenizer.ggml.add_bos_token', 'boolean') ?? pre.addBos,
      ggufGet(g, 'tokenizer.ggml.add_eos_token', 'boolean') ?? false,
    ),
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: pre.ignoreMerges,
      vocab: vocabObject(v),
      merges,
    },
  };
}

/** A metadata array whose entries all have one type (undefined when the key is absent). */
function arrayOf(g: GgufFile, key: string, kind: 'string'): string[] | undefined;
function arrayOf(g: GgufFile, key: string, kind: 'number'): number[] | undefined;
function arrayOf(g: GgufFile, key: string, kind: 'string' | 'number'): (string | number)[] | undefined {
  const a = ggufGet(g, key, 'array');
  if (a === undefined) return undefined;
  const bad = a.findIndex((x) => typeof x !== kind);
  if (bad >= 0)
    throw new FormatError(g.path, `metadata ${key}[${bad}] is a ${typeof a[bad]}, not a ${kind}`, {
      hint: 'the file is corrupt; convert the model again',
    });
  return a as (string | number)[];
}

/**
 * The tokenizer.json of a GGUF file's `tokenizer.ggml.*` metadata, or null when the file has no
 * vocabulary of a kind qtune rebuilds (`llama` or `gpt2`).
 */
export function ggufTokenizerJson(g: GgufFile): Json | null {
  const model = ggufGet(g, 'tokenizer.ggml.model', 'string');
  if (model !== 'llama' && model !== 'gpt2') return null;
  const tokens = arrayOf(g, 'tokenizer.ggml.tokens', 'string');
  if (tokens === undefined) return null;
  const types = arrayOf(g, 'tokenizer.ggml.token_type', 'number') ?? [];
  const v: Vocabulary = {
    tokens,
    types: tokens.map((_, id) => types[id] ?? NORMAL),
    bos: ggufGet(g, 'tokenizer.ggml.bos_token_id', 'number'),
    eos: ggufGet(g, 'tokenizer.ggml.eos_token_id', 'number'),
  };
  if (model === 'llama') return spmJson(g, v);
  const merges = arrayOf(g, 'tokenizer.ggml.merges', 'string');
  return merges === undefined ? null : bpeJson(g, v, merges);
}
