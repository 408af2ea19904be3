/**
 * What `qtune train` leaves in output_dir besides the adapter (or model) and the metrics, as a PEFT or
 * Axolotl user expects to find it: the resolved config (`qtune_config.yaml`), the tokenizer files, the
 * run's summary (`trainer_state.json`, with the best checkpoint of load_best_model_at_end) and a
 * model card (`README.md`, model-card.ts). Every file is written atomically (io/atomic.ts).
 *
 * @example
 * const best = new BestCheckpoint();
 * trainer.onLog = (r) => best.observe(r);
 * writeRunFiles('out', { config, result, best: best.best, ... });
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { writeFileAtomic } from '../io/atomic.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { METRICS_FILE } from '../report/jsonl.js';
import type { LogRecord, TrainResult } from '../train/trainer.js';
import { modelCard } from './model-card.js';
import { ConfigError } from '../errors.js';
import { RUN_CONFIG_FILE } from './run-folder.js';
import type { TrainConfig } from './train-config.js';

/** The resolved config's file name: `qtune train --config output_dir/qtune_config.yaml` trains it again. */
export const CONFIG_FILE = RUN_CONFIG_FILE;
/** A tokenizer file that a base folder may hold and qtune does not write from its Tokenizer. */
const EXTRA_TOKENIZER_FILES = ['special_tokens_map.json', 'tokenizer.model'];

/** A checkpoint with its validation loss. */
export interface ScoredCheckpoint {
  step: number;
  loss: number;
  path: string;
}

/**
 * The checkpoint of the lowest validation loss among those saved at an evaluated step, from the
 * run's log records (the Trainer logs an evaluation before the checkpoint of the same step).
 */
export class BestCheckpoint {
  best: ScoredCheckpoint | null = null;
  /** Evaluations seen (this session and, after {@link seed}, the earlier one). */
  evaluations = 0;
  private readonly evals = new Map<number, number>();

  observe(r: Pick<LogRecord, 'kind' | 'step' | 'loss' | 'path'>): void {
    if (r.kind === 'eval' && r.loss !== undefined && Number.isFinite(r.loss)) {
      this.evals.set(r.step, r.loss);
      this.evaluations++;
    }
    if (r.kind !== 'checkpoint' || r.path === undefined) return;
    const loss = this.evals.get(r.step);
    // ties keep the earlier checkpoint, as Hugging Face's Trainer (strictly lower replaces)
    if (loss !== undefined && (this.best === null || loss < this.best.loss))
      this.best = { step: r.step, loss, path: r.path };
  }

  /**
   * A resumed run: the evaluations and checkpoints of the earlier session (metrics.jsonl) up to the
   * step it resumes at (later ones are trained again), whose checkpoint folders are still on disk.
   */
  seed(outputDir: string, upToStep: number): void {
    const file = path.join(outputDir, METRICS_FILE);
    if (!existsSync(file)) return;
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      let row: unknown;
      try {
        row = JSON.parse(line);
      } catch {
        continue; // a line cut by a crash
      }
      if (row === null || typeof row !== 'object') continue;
      const { kind, step, loss, path: p } = row as Record<string, unknown>;
      if ((kind !== 'eval' && kind !== 'checkpoint') || typeof step !== 'number' || step > upToStep) continue;
      if (kind === 'checkpoint' && (typeof p !== 'string' || !existsSync(p))) continue;
      this.observe({
        kind,
        step,
        ...(typeof loss === 'number' ? { loss } : {}),
        ...(typeof p === 'string' ? { path: p } : {}),
      });
    }
  }
}

/** What the run files are made of. */
export interface RunSummary {
  config: TrainConfig;
  result: TrainResult;
  /** The run's total optimizer steps. */
  totalSteps: number;
  /** The trained weights are those of this checkpoint (load_best_model_at_end), or null: the last step's. */
  best: ScoredCheckpoint | null;
  /** The adapter kind, or null for a trained model (full, llama_pro). */
  adapter: 'lora' | 'dora' | null;
  quantization: string | null;
  tokenizer: Tokenizer | null;
}

/** Writes qtune_config.yaml, the tokenizer files, trainer_state.json and README.md into `dir`; returns the paths. */
export function writeRunFiles(dir: string, s: RunSummary): string[] {
  const files: string[] = [];
  const write = (name: string, text: string): void => {
    writeFileAtomic(path.join(dir, name), [text]);
    files.push(path.join(dir, name));
  };
  write(CONFIG_FILE, resolvedConfigYaml(s.config));
  // an adapter is used with the base's tokenizer; a trained model's folder (dir/model) has its own
  if (s.adapter !== null && s.tokenizer !== null)
    files.push(...writeTokenizerFiles(dir, s.tokenizer, s.config.model));
  write('trainer_state.json', JSON.stringify(trainerState(s), null, 2) + '\n');
  write('README.md', modelCard(s));
  return files;
}

/** Every setting of the run, after defaults, the config file and the flags: a config `qtune train` reads. */
export function resolvedConfigYaml(c: TrainConfig): string {
  return (
    '# qtune train: the resolved config of this run (defaults, the config file and the flags applied).\n' +
    `# Train it again with: npx qtune train --config THIS_FILE --output_dir OTHER_DIR\n` +
    stringify(c, { nullStr: 'null' })
  );
}

/**
 * tokenizer.json and tokenizer_config.json (as the run used them, chat template included), and the
 * base folder's special_tokens_map.json and tokenizer.model when it has them, as PEFT users save
 * the tokenizer beside an adapter.
 */
function writeTokenizerFiles(dir: string, tok: Tokenizer, base: string | null): string[] {
  const out: string[] = [];
  const write = (name: string, chunk: string | Uint8Array): void => {
    writeFileAtomic(path.join(dir, name), [chunk]);
    out.push(path.join(dir, name));
  };
  write('tokenizer.json', JSON.stringify(tok.json));
  const config = { ...tok.config };
  if (tok.hasOwnChatTemplate) config['chat_template'] = tok.chatTemplate;
  write('tokenizer_config.json', JSON.stringify(config, null, 2) + '\n');
  if (base !== null && existsSync(base) && statSync(base).isDirectory())
    for (const name of EXTRA_TOKENIZER_FILES) {
      const file = path.join(base, name);
      if (existsSync(file)) write(name, readFileSync(file));
    }
  return out;
}

const finite = (xs: readonly number[]): number | null => xs.filter(Number.isFinite).at(-1) ?? null;

/** output_dir/trainer_state.json: the run's summary, with Hugging Face Trainer's key names. */
export function trainerState(s: RunSummary): Record<string, unknown> {
  const { result, config: c } = s;
  const lastEval = result.evals.at(-1);
  return {
    global_step: result.steps,
    max_steps: s.totalSteps,
    train_loss: finite(result.losses),
    eval_loss: lastEval?.loss ?? null,
    train_runtime: result.seconds,
    tokens_per_s: result.tokensPerS,
    load_best_model_at_end: c.load_best_model_at_end,
    metric_for_best_model: c.load_best_model_at_end ? c.metric_for_best_model : null,
    best_metric: s.best?.loss ?? null,
    best_model_checkpoint: s.best?.path ?? null,
    best_global_step: s.best?.step ?? null,
    log_history: result.evals.map((e) => ({
      step: e.step,
      eval_loss: e.loss,
      eval_perplexity: e.perplexity,
    })),
  };
}

/**
 * load_best_model_at_end, as Hugging Face's Trainer: the run evaluates every eval_steps and keeps a
 * checkpoint at each evaluation (save_steps 0 becomes eval_steps; another value must be a multiple).
 */
export function checkBestModel(c: TrainConfig): void {
  if (c.eval_steps === 0)
    throw new ConfigError('load_best_model_at_end: true needs eval_steps above 0', {
      hint: 'set eval_steps (e.g. 10) so that checkpoints can be compared by validation loss',
    });
  if (c.val_dataset === null && c.val_size === 0 && c.dataset_format !== 'dummy')
    throw new ConfigError('load_best_model_at_end: true needs validation data, but val_size is 0', {
      hint: 'set val_size (e.g. 0.05) or val_dataset',
    });
  if (c.save_steps === 0) c.save_steps = c.eval_steps;
  else if (c.save_steps % c.eval_steps !== 0)
    throw new ConfigError(
      `save_steps: ${c.save_steps} is not a multiple of eval_steps ${c.eval_steps}, as load_best_model_at_end needs`,
      { hint: `use save_steps ${c.eval_steps} (or a multiple of it), or leave it 0` },
    );
}
