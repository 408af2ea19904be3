/**
 * The readers the fuzz tests attack, each with the real files it starts from (written by qtune
 * itself, or the repository's own data and example configs), how a case mutates them, and how the
 * result is read and checked. A case passes when the reader succeeds with a consistent result or
 * throws a QtuneError; anything else is a bug.
 */
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { trainerOptions } from '../../src/cli/commands/train.js';
import { main } from '../../src/cli/main.js';
import { readConfigFile, resolveTrainConfig, TRAIN_OPTIONS } from '../../src/cli/train-config.js';
import { loadDataset } from '../../src/data/dataset.js';
import { readRecords } from '../../src/data/records.js';
import { cpuBackend } from '../../src/engine/device.js';
import { readGguf, readGgufTensor } from '../../src/io/gguf.js';
import { DTYPE_BYTES, SafetensorsCheckpoint, writeSafetensors } from '../../src/io/safetensors.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { configToJson, parseLlamaConfig } from '../../src/models/config.js';
import { ggufToConfig, ggufTokenizer, writeLlamaGguf } from '../../src/models/llama-gguf.js';
import { llamaWeights, type LlamaModel } from '../../src/models/llama.js';
import { loadGgufWeights, loadWeights, readConfig } from '../../src/models/load.js';
import { createTinyModel, tinyTokenizerFiles } from '../../src/models/tiny.js';
import { createSchedule } from '../../src/optim/schedule.js';
import { Trainer } from '../../src/train/trainer.js';
import { gaussian, seededUniform } from '../../src/util/random.js';
import { ROOT } from '../helpers/cli.js';
import { fineTuneData } from '../helpers/finetune.js';
import { ggufLayout, safetensorsLayout } from './layout.js';
import { int, mutateBinary, mutateJson, mutateLines, pick, type Rand } from './mutate.js';

export interface FuzzCase {
  desc: string;
  /** Files to write into the case folder (relative name → bytes or text). */
  files: Record<string, Uint8Array | string>;
}

export interface FuzzTarget {
  /** Cases in `npm test`; QTUNE_SLOW=1 runs ten times as many. */
  cases: number;
  /** What a case reads, for the summary. */
  reads: string;
  /** Writes the real files the cases start from into `dir` (once per run). */
  prepare(dir: string): void | Promise<void>;
  /** Case `index`'s mutated files. */
  make(r: Rand, index: number): FuzzCase;
  /** Reads the case folder and checks the result; throws what the reader throws. */
  read(dir: string, index: number): Promise<void>;
}

class Inconsistent extends Error {
  override name = 'Inconsistent';
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new Inconsistent(what);
}

/** Every weight of a loaded model has the shape its config gives; frees the model. */
function checkModel(model: LlamaModel): void {
  for (const w of llamaWeights(model.config)) {
    const t = model.weight(w.name);
    check(
      t.shape.join() === w.shape.join(),
      `${w.name} is [${t.shape.join(', ')}], spec [${w.shape.join(', ')}]`,
    );
  }
  model.dispose();
}

/** The base model of the fuzz cases: the parity fixture's Llama shape (vocab 256), random weights. */
function tinyConfig() {
  const j = JSON.parse(
    readFileSync(path.join(ROOT, 'tests/fixtures/parity/llama_gqa/config.json'), 'utf8'),
  ) as Record<string, unknown>;
  return parseLlamaConfig(j);
}

// ------------------------------------------------------------------------------------ safetensors

let stBytes: Uint8Array;
let stConfig: string;

const safetensors: FuzzTarget = {
  cases: 900,
  reads: 'SafetensorsCheckpoint (every tensor read); every 6th case also loadWeights onto the CPU',
  prepare(dir) {
    const config = tinyConfig();
    const u = seededUniform(7);
    const file = path.join(dir, 'model.safetensors');
    writeSafetensors(
      file,
      llamaWeights(config).map((w, i) => ({
        name: w.name,
        shape: w.shape,
        dtype: i % 3 === 0 ? ('BF16' as const) : i % 3 === 1 ? ('F16' as const) : ('F32' as const),
        data: gaussian(
          u,
          w.shape.reduce((a, b) => a * b, 1),
          0.02,
        ),
      })),
      { format: 'pt' },
    );
    stBytes = readFileSync(file);
    stConfig = JSON.stringify(configToJson(config), null, 2);
  },
  make(r, index) {
    const layout = safetensorsLayout(stBytes);
    const files: FuzzCase['files'] = { 'config.json': stConfig, 'model.safetensors': stBytes };
    if (index % 6 === 5 && r() < 0.4) {
      // the load path with a damaged config.json and intact weights
      const m = mutateJson(JSON.parse(stConfig) as never, r);
      files['config.json'] = m.text;
      return { desc: `config.json: ${m.desc}`, files };
    }
    if (r() < 0.45) {
      // a semantic change to the JSON header, re-encoded with its length (or the old one)
      const headerText = Buffer.from(stBytes.subarray(8, 8 + layout.headerLen)).toString('utf8');
      const m = mutateJson(JSON.parse(headerText) as never, r);
      const keepLength = r() < 0.15;
      const head = Buffer.from(m.text, 'utf8');
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(keepLength ? layout.headerLen : head.length));
      files['model.safetensors'] = Buffer.concat([len, head, stBytes.subarray(8 + layout.headerLen)]);
      return { desc: `header: ${m.desc}${keepLength ? ' (old header length kept)' : ''}`, files };
    }
    const m = mutateBinary(stBytes, r, layout.hot, layout.fields);
    files['model.safetensors'] = m.bytes;
    return { desc: m.desc, files };
  },
  read(dir, index) {
    const ckpt = SafetensorsCheckpoint.open(dir);
    try {
      const size = readFileSync(path.join(dir, 'model.safetensors')).length;
      for (const name of ckpt.names()) {
        const e = ckpt.entry(name);
        const numel = e.shape.reduce((a, b) => a * b, 1);
        check(e.bytes === numel * DTYPE_BYTES[e.dtype], `${name}: ${e.bytes} bytes for ${numel} ${e.dtype}`);
        check(
          e.offset >= 8 && e.offset + e.bytes <= size,
          `${name}: bytes [${e.offset}, +${e.bytes}) outside ${size}`,
        );
        check(ckpt.readRaw(name).length === e.bytes, `${name}: read back a different length`);
        if (e.dtype === 'F32' || e.dtype === 'F16' || e.dtype === 'BF16')
          check(ckpt.readF32(name).length === numel, `${name}: readF32 length`);
      }
    } finally {
      ckpt.close();
    }
    if (index % 6 === 5) checkModel(loadWeights(dir, readConfig(dir), cpuBackend()).model);
    return Promise.resolve();
  },
};

// ------------------------------------------------------------------------------------ GGUF

let ggufBytes: Uint8Array;

const gguf: FuzzTarget = {
  cases: 600,
  reads:
    'readGguf (every tensor read); every 6th case also loadGgufWeights onto the CPU, every 40th the tokenizer',
  prepare(dir) {
    // the tiny model as qtune's own GGUF (q8_0 matrices, f32 norms), with a real tokenizer's metadata
    const config = tinyConfig();
    const u = seededUniform(11);
    const folder = path.join(dir, 'model');
    mkdirSync(folder, { recursive: true });
    writeSafetensors(
      path.join(folder, 'model.safetensors'),
      llamaWeights(config).map((w) => ({
        name: w.name,
        shape: w.shape,
        dtype: 'F32' as const,
        data: gaussian(
          u,
          w.shape.reduce((a, b) => a * b, 1),
          0.02,
        ),
      })),
    );
    const files = tinyTokenizerFiles('llama2');
    const tok = new Tokenizer(
      JSON.parse(files.tokenizerJson) as Record<string, unknown>,
      JSON.parse(files.tokenizerConfigJson) as Record<string, unknown>,
    );
    const { model } = loadWeights(folder, config, cpuBackend());
    const file = path.join(dir, 'model.gguf');
    try {
      writeLlamaGguf(file, model, tok, { dtype: 'q8_0' });
    } finally {
      model.dispose();
    }
    ggufBytes = readFileSync(file);
  },
  make(r) {
    const layout = ggufLayout(ggufBytes);
    const m = mutateBinary(ggufBytes, r, layout.hot, layout.fields);
    return { desc: m.desc, files: { 'model.gguf': m.bytes } };
  },
  read(dir, index) {
    const file = path.join(dir, 'model.gguf');
    const g = readGguf(file);
    const size = readFileSync(file).length;
    for (const t of g.tensors.values()) {
      check(t.offset >= g.dataStart && t.offset + t.bytes <= size, `${t.name} outside the file`);
      check(readGgufTensor(g, t.name).length === t.bytes, `${t.name}: read back a different length`);
    }
    if (index % 6 === 5) checkModel(loadGgufWeights(file, cpuBackend()).model);
    if (index % 40 === 39) {
      const tok = ggufTokenizer(g, ggufToConfig(g));
      check(tok.decode(tok.encode('Call me Ishmael.', { addSpecialTokens: false })) !== null, 'decode');
    }
    return Promise.resolve();
  },
};

// ------------------------------------------------------------------------------------ JSONL / JSON

let jsonlText: string;
let tokenizer: Tokenizer | undefined;

const jsonl: FuzzTarget = {
  cases: 700,
  reads: 'readRecords (.jsonl and .json); every 16th case also loadDataset (alpaca, real llama2 tokenizer)',
  prepare() {
    jsonlText = readFileSync(path.join(ROOT, 'data', 'style.jsonl'), 'utf8');
  },
  make(r, index) {
    const asArray = index % 4 === 3;
    const lines = jsonlText.trimEnd().split('\n');
    let text: string;
    let desc: string;
    const k = r();
    if (k < 0.4) {
      const i = int(r, lines.length);
      const m = mutateJson(JSON.parse(lines[i]!) as never, r);
      lines[i] = m.text;
      text = asArray ? `[\n${lines.join(',\n')}\n]\n` : lines.join('\n') + '\n';
      desc = `record ${i + 1}: ${m.desc}`;
    } else {
      const base = asArray ? `[\n${lines.join(',\n')}\n]\n` : jsonlText;
      if (k < 0.75) {
        const m = mutateLines(base, r, false);
        text = m.text;
        desc = m.desc;
      } else {
        const bytes = Buffer.from(base, 'utf8');
        const m = mutateBinary(bytes, r, [[0, bytes.length]]);
        return { desc: m.desc, files: { [asArray ? 'data.json' : 'data.jsonl']: m.bytes } };
      }
    }
    return { desc, files: { [asArray ? 'data.json' : 'data.jsonl']: text } };
  },
  async read(dir, index) {
    const file = path.join(dir, index % 4 === 3 ? 'data.json' : 'data.jsonl');
    const records = readRecords(file);
    for (const rec of records) {
      check(
        rec.value !== null && typeof rec.value === 'object' && !Array.isArray(rec.value),
        'a record is not an object',
      );
      check(Number.isInteger(rec.line) && rec.line >= 1, `record line ${rec.line}`);
    }
    if (index % 16 === 7) {
      if (tokenizer === undefined) {
        const files = tinyTokenizerFiles('llama2');
        tokenizer = new Tokenizer(
          JSON.parse(files.tokenizerJson) as Record<string, unknown>,
          JSON.parse(files.tokenizerConfigJson) as Record<string, unknown>,
        );
      }
      const data = await loadDataset(
        { path: file, format: 'alpaca', val_size: 0.1, packing: index % 32 === 7 },
        tokenizer,
        64,
      );
      for (const e of [...data.train, ...(data.validation ?? [])])
        check(e.ids.length === 64 && e.labels.length === 64, 'an example is not 64 long');
    }
  },
};

// ------------------------------------------------------------------------------------ YAML

const EXAMPLES = [
  'lora-tiny.yaml',
  'qlora-tiny.yaml',
  'dora-tiny.yaml',
  'full-tiny.yaml',
  'quickstart.yaml',
  'tinyllama-1.1b-qlora.yaml',
];
const yamlTexts = new Map<string, string>();

const yaml: FuzzTarget = {
  cases: 900,
  reads: 'readConfigFile, resolveTrainConfig, the trainer options and the schedule they make',
  prepare() {
    for (const e of EXAMPLES) yamlTexts.set(e, readFileSync(path.join(ROOT, 'examples', e), 'utf8'));
  },
  make(r) {
    const name = pick(r, EXAMPLES);
    const text = yamlTexts.get(name)!;
    if (r() < 0.75) {
      const m = mutateLines(text, r, true);
      const again = r() < 0.3 ? mutateLines(m.text, r, true) : null;
      return {
        desc: `${name}: ${m.desc}${again === null ? '' : `; ${again.desc}`}`,
        files: { 'run.yaml': again?.text ?? m.text },
      };
    }
    const bytes = Buffer.from(text, 'utf8');
    const m = mutateBinary(bytes, r, [[0, bytes.length]]);
    return { desc: `${name}: ${m.desc}`, files: { 'run.yaml': m.bytes } };
  },
  read(dir) {
    const c = resolveTrainConfig(readConfigFile(path.join(dir, 'run.yaml')));
    for (const [k, v] of Object.entries(c)) {
      const spec = (TRAIN_OPTIONS as Record<string, { kind: string }>)[k];
      check(spec !== undefined && Object.hasOwn(TRAIN_OPTIONS, k), `unknown key ${k} in the result`);
      if (v === null) continue;
      const kind = spec!.kind;
      const ok =
        kind === 'list'
          ? Array.isArray(v) && v.every((x) => typeof x === 'string')
          : kind === 'numbers' // layer_split
            ? Array.isArray(v) && v.every((x) => typeof x === 'number' && Number.isFinite(x))
            : kind === 'sizes' // max_memory: device name → bytes
              ? typeof v === 'object' &&
                !Array.isArray(v) &&
                Object.values(v as object).every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0)
              : kind === 'int'
                ? Number.isInteger(v)
                : kind === 'number'
                  ? typeof v === 'number' && Number.isFinite(v)
                  : typeof v === kind;
      check(ok, `${k} = ${JSON.stringify(v)} is not a ${kind}`);
    }
    const o = trainerOptions(c);
    createSchedule({ ...o.schedule, lr: c.lr, total_steps: c.max_steps ?? 100 } as never);
    return Promise.resolve();
  },
};

// ------------------------------------------------------------------------------------ checkpoints

const CKPT_FILES = ['trainer_state.json', 'trainable.safetensors', 'optimizer.safetensors'] as const;
const ckptFiles = new Map<string, Uint8Array>();
let ckptTrainer: Trainer | undefined;

const checkpoint: FuzzTarget = {
  cases: 500,
  reads: 'Trainer.checkpointAdapter (qtune export); every 3rd case also Trainer.loadCheckpoint (resume)',
  async prepare(dir) {
    // a real checkpoint: one LoRA step of the tiny model on real text
    const model = path.join(dir, 'tiny');
    createTinyModel(model, { hiddenSize: 64, intermediateSize: 128, layers: 1, heads: 4, kvHeads: 2 });
    const files = tinyTokenizerFiles('llama2');
    const tok = new Tokenizer(
      JSON.parse(files.tokenizerJson) as Record<string, unknown>,
      JSON.parse(files.tokenizerConfigJson) as Record<string, unknown>,
    );
    const data = fineTuneData(tok, 32, 4, 0);
    const out = path.join(dir, 'run');
    ckptTrainer = await Trainer.create(
      model,
      { train: data.train },
      {
        trainType: 'lora',
        backend: 'cpu',
        maxSteps: 1,
        batchSize: 2,
        saveEvery: 1,
        outputDir: out,
      },
    );
    ckptTrainer.train();
    for (const f of CKPT_FILES) ckptFiles.set(f, readFileSync(path.join(out, 'checkpoint-1', f)));
  },
  make(r) {
    const files: FuzzCase['files'] = Object.fromEntries(ckptFiles);
    const k = r();
    if (k < 0.5) {
      const m = mutateJson(
        JSON.parse(Buffer.from(ckptFiles.get('trainer_state.json')!).toString('utf8')) as never,
        r,
      );
      files['trainer_state.json'] = m.text;
      return { desc: `trainer_state.json: ${m.desc}`, files };
    }
    const name =
      k < 0.6 ? 'trainer_state.json' : k < 0.85 ? 'trainable.safetensors' : 'optimizer.safetensors';
    const bytes = ckptFiles.get(name)!;
    const layout = name.endsWith('.json')
      ? { hot: [[0, bytes.length]] as const, fields: [] }
      : safetensorsLayout(bytes);
    const m = mutateBinary(bytes, r, layout.hot, layout.fields);
    files[name] = m.bytes;
    return { desc: `${name}: ${m.desc}`, files };
  },
  read(dir, index) {
    const a = Trainer.checkpointAdapter(dir);
    for (const [name, m] of a.modules)
      check(m.A.length === m.rank * m.inFeatures && m.B.length === m.outFeatures * m.rank, `${name}: sizes`);
    if (index % 3 === 2) {
      ckptTrainer!.loadCheckpoint(dir);
      check(Number.isSafeInteger(ckptTrainer!.globalStep), `step ${ckptTrainer!.globalStep}`);
    }
    return Promise.resolve();
  },
};

// ------------------------------------------------------------------------------------ CLI paths

/**
 * Paths that are the wrong kind of thing for the option they are given to. Inputs that must be a
 * file, a model folder, an output folder: each gets a folder, a file, /dev/null, a path under a
 * file, a missing path, or a place nobody may write (/proc and /sys: the tests run as root, whom
 * chmod does not stop). A full disk needs a tmpfs: tests/cli/fs-errors.test.ts.
 */
type PathRole = 'file' | 'model' | 'output' | 'outfile';

const BAD_PATHS: Record<PathRole, readonly string[]> = {
  file: ['folder', 'devnull', 'under-file', 'missing', 'proc', 'sys'],
  model: ['file', 'devnull', 'under-file', 'missing', 'folder', 'proc'],
  output: ['file', 'devnull', 'under-file', 'proc', 'sys', 'proc-self'],
  outfile: ['folder', 'devnull', 'under-file', 'proc', 'sys'],
};

/** command, option, its role: the option is replaced by a bad path of that role. */
const PATH_OPTIONS: readonly [string, string, PathRole][] = [
  ['train', '--config', 'file'],
  ['train', '--output_dir', 'output'],
  ['train', '--dataset', 'file'],
  ['train', '--val_dataset', 'file'],
  ['train', '--model', 'model'],
  ['eval', '--model', 'model'],
  ['eval', '--dataset', 'file'],
  ['generate', '--model', 'model'],
  ['init-tiny', '', 'output'],
  ['quantize', '--out', 'outfile'],
];

let cliDir = '';

function badPath(kind: string, ext: string): string {
  switch (kind) {
    case 'folder':
      return path.join(cliDir, `folder${ext}`);
    case 'file':
      return path.join(cliDir, 'file.txt');
    case 'devnull':
      return '/dev/null';
    case 'under-file':
      return path.join(cliDir, 'file.txt', `sub${ext}`);
    case 'missing':
      return path.join(cliDir, 'missing', `nothing${ext}`);
    case 'proc':
      return `/proc/qtune-fuzz${ext}`;
    case 'sys':
      return `/sys/qtune-fuzz${ext}`;
    default:
      return '/proc/self';
  }
}

function goodArgs(command: string): string[] {
  const model = path.join(cliDir, 'model');
  const data = path.join(cliDir, 'data.jsonl');
  switch (command) {
    case 'train':
      return [
        ...['train', '--config', path.join(cliDir, 'run.yaml'), '--model', model, '--dataset', data],
        ...['--output_dir', path.join(cliDir, 'out'), '--max_steps', '1', '--context_length', '96'],
      ];
    case 'eval':
      return ['eval', '--model', model, '--dataset', data, '--context-length', '96'];
    case 'generate':
      return ['generate', '--model', model, '--prompt', 'Hello', '--max-new-tokens', '1'];
    case 'quantize':
      return ['quantize', '--model', model, '--method', 'int8', '--out', path.join(cliDir, 'q.gguf')];
    default:
      return ['init-tiny', path.join(cliDir, 'new-model'), '--hidden', '32', '--layers', '1'];
  }
}

const cliPaths: FuzzTarget = {
  cases: 70,
  reads:
    'qtune train / eval / generate / init-tiny / quantize (in process) with one or two options given a bad path',
  prepare(dir) {
    cliDir = dir;
    createTinyModel(path.join(dir, 'model'), {
      hiddenSize: 32,
      intermediateSize: 64,
      layers: 1,
      heads: 2,
      kvHeads: 1,
    });
    mkdirSync(path.join(dir, 'folder'));
    mkdirSync(path.join(dir, 'folder.gguf'));
    writeFileSync(path.join(dir, 'file.txt'), 'not what any option wants\n');
    writeFileSync(path.join(dir, 'run.yaml'), readFileSync(path.join(ROOT, 'examples', 'lora-tiny.yaml')));
    writeFileSync(
      path.join(dir, 'data.jsonl'),
      '{"instruction": "Say hi.", "input": "", "output": "Hi."}\n'.repeat(4),
    );
  },
  make(r) {
    const [command] = pick(r, PATH_OPTIONS);
    const options = PATH_OPTIONS.filter(([c]) => c === command);
    const args = goodArgs(command);
    const descs: string[] = [];
    for (let k = 0; k < (r() < 0.25 ? 2 : 1); k++) {
      const [, option, role] = pick(r, options);
      const ext =
        option === '--config' ? '.yaml' : role === 'file' ? '.jsonl' : role === 'outfile' ? '.gguf' : '';
      const bad = badPath(pick(r, BAD_PATHS[role]), ext);
      if (option === '') args[1] = bad;
      else if (args.includes(option)) args[args.indexOf(option) + 1] = bad;
      else args.push(option, bad);
      descs.push(`${option || 'DIR'} ${bad}`);
    }
    return { desc: `${command} ${descs.join(', ')}`, files: { 'case.json': JSON.stringify(args) } };
  },
  async read(dir) {
    const args = JSON.parse(readFileSync(path.join(dir, 'case.json'), 'utf8')) as string[];
    const errors: string[] = [];
    const error = console.error;
    console.error = (...xs: unknown[]) => errors.push(xs.map(String).join(' '));
    let code: number;
    try {
      code = await main(args, () => undefined);
    } finally {
      console.error = error;
    }
    check(code === 2, `exit ${code}, not 2: ${errors.join(' | ')}`);
    const text = errors.join('\n');
    check(
      errors.length === 1 && !text.includes('\n') && text.startsWith('qtune: error: '),
      `stderr: ${text}`,
    );
    for (const p of ['/proc/qtune-fuzz', '/sys/qtune-fuzz', path.join(cliDir, 'missing')])
      check(!existsSync(p), `${p} was created`);
    // as root, renaming a temporary file onto /dev/null would replace the device with a file
    check(statSync('/dev/null').isCharacterDevice(), '/dev/null is no longer a device');
  },
};

export const TARGETS: Record<string, FuzzTarget> = {
  safetensors,
  gguf,
  jsonl,
  yaml,
  checkpoint,
  cliPaths,
};

/** Writes a case's files into `dir` (emptied first by the caller). */
export function writeCase(dir: string, c: FuzzCase): void {
  for (const [name, data] of Object.entries(c.files)) writeFileSync(path.join(dir, name), data);
}
