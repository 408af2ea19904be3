/**
 * output_dir/README.md: the model card of a `qtune train` run, as the Hugging Face Hub shows it (YAML
 * front matter with base_model and library_name, then the run): the base, the data, the train type,
 * the hyperparameters, the final losses and steps, and how to load the result in PEFT, llama.cpp
 * and qtune.
 */
import path from 'node:path';
import type { RunSummary } from './run-outputs.js';

const fmt = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : v.toFixed(4));

/** The hyperparameters the card lists (qtune_config.yaml has every setting). */
function hyperparameters(s: RunSummary): [string, unknown][] {
  const c = s.config;
  const rows: [string, unknown][] = [['train_type', c.train_type]];
  if (s.quantization !== null) rows.push(['quantization', s.quantization]);
  if (s.adapter !== null)
    rows.push(
      ['lora_rank', c.lora_rank],
      ['lora_alpha', c.lora_alpha],
      ['lora_dropout', c.lora_dropout],
      ['lora_target_modules', c.lora_target_modules.join(', ')],
      ['use_rslora', c.use_rslora],
    );
  rows.push(
    ['optimizer', c.optimizer],
    ['lr', c.lr],
    ['lr_scheduler', c.lr_scheduler],
    ['warmup_steps', c.warmup_steps],
    ['warmup_ratio', c.warmup_ratio],
    ['weight_decay', c.weight_decay],
    ['max_grad_norm', c.max_grad_norm],
    ['batch_size', c.batch_size],
    ['gradient_accumulation_steps', c.gradient_accumulation_steps],
    ['num_epochs', c.num_epochs],
    ['max_steps', c.max_steps],
    ['context_length', c.context_length],
    ['packing', c.packing],
    ['precision', c.precision],
    ['seed', c.seed],
  );
  return rows.filter(([, v]) => v !== null);
}

function results(s: RunSummary): string[] {
  const { result, best, config: c } = s;
  const trainLoss = result.losses.filter(Number.isFinite).at(-1);
  const lastEval = result.evals.at(-1);
  const lines = [
    `- steps: ${result.steps} of ${s.totalSteps}`,
    `- final train loss: ${fmt(trainLoss)}`,
    `- final validation loss: ${fmt(lastEval?.loss)}${lastEval === undefined ? ' (no validation data)' : ` (perplexity ${lastEval.perplexity.toFixed(2)}, step ${lastEval.step})`}`,
  ];
  if (c.load_best_model_at_end)
    lines.push(
      best === null
        ? '- load_best_model_at_end: no checkpoint was evaluated, so the weights are the last step’s'
        : `- load_best_model_at_end: the weights are those of ${path.basename(best.path)} (step ${best.step}, validation loss ${fmt(best.loss)}, the lowest by ${c.metric_for_best_model})`,
    );
  lines.push(`- tokens/s (loss tokens): ${result.tokensPerS.toFixed(0)}; ${result.seconds.toFixed(0)} s`);
  return lines;
}

function usage(s: RunSummary): string[] {
  const c = s.config;
  const base = c.model ?? '';
  const dir = c.output_dir;
  const fence = (lang: string, body: string[]): string[] => ['```' + lang, ...body, '```', ''];
  if (s.adapter === null) {
    const folder = path.join(dir, 'model');
    return [
      `The trained model is the Hugging Face folder \`${folder}\`.`,
      '',
      'Transformers (Python):',
      '',
      ...fence('python', [
        'from transformers import AutoModelForCausalLM, AutoTokenizer',
        '',
        `model = AutoModelForCausalLM.from_pretrained(${JSON.stringify(folder)})`,
        `tokenizer = AutoTokenizer.from_pretrained(${JSON.stringify(folder)})`,
      ]),
      "llama.cpp: convert it with llama.cpp's `convert_hf_to_gguf.py` and run `llama-cli -m model.gguf`.",
      '',
      'qtune:',
      '',
      ...fence('bash', [`npx qtune generate --model ${folder} --prompt "..."`]),
    ];
  }
  const gguf = base.endsWith('.gguf') ? base : 'base.gguf';
  return [
    'PEFT (Python):',
    '',
    ...fence('python', [
      'from peft import PeftModel',
      'from transformers import AutoModelForCausalLM, AutoTokenizer',
      '',
      `base = AutoModelForCausalLM.from_pretrained(${JSON.stringify(base)})`,
      `model = PeftModel.from_pretrained(base, ${JSON.stringify(dir)})`,
      `tokenizer = AutoTokenizer.from_pretrained(${JSON.stringify(dir)})`,
    ]),
    ...(s.adapter === 'dora'
      ? [
          'llama.cpp has no DoRA: merge the adapter into the base first (`npx qtune merge --model BASE --adapter DIR --out merged.gguf`) and run `llama-cli -m merged.gguf`.',
          '',
        ]
      : [
          `llama.cpp (\`adapter.gguf\`${base.endsWith('.gguf') ? '' : "; base.gguf is the base converted with llama.cpp's convert_hf_to_gguf.py"}):`,
          '',
          ...fence('bash', [`llama-cli -m ${gguf} --lora ${path.join(dir, 'adapter.gguf')} -p "..."`]),
        ]),
    'qtune:',
    '',
    ...fence('bash', [`npx qtune generate --model ${base} --adapter ${dir} --prompt "..."`]),
  ];
}

/** The model card (README.md) of a finished run. */
export function modelCard(s: RunSummary): string {
  const c = s.config;
  const tags = ['qtune', c.train_type, ...(s.adapter === null ? [] : ['peft', s.adapter])];
  const front = [
    '---',
    `base_model: ${JSON.stringify(c.model)}`,
    ...(s.adapter === null ? [] : ['library_name: peft']),
    `tags: [${[...new Set(tags)].join(', ')}]`,
    '---',
  ];
  const data =
    c.dataset_format === 'dummy'
      ? ['- dataset: dummy (random tokens)']
      : [
          `- dataset: \`${c.dataset ?? ''}\` (format ${c.dataset_format}${c.max_samples === null ? '' : `, at most ${c.max_samples} records`})`,
          `- validation: ${c.val_dataset === null ? `${c.val_size} split off the dataset` : `\`${c.val_dataset}\``}`,
        ];
  return [
    ...front,
    '',
    `# ${path.basename(path.resolve(c.output_dir))}`,
    '',
    `${s.adapter === null ? 'A model' : `A ${s.adapter === 'dora' ? 'DoRA' : 'LoRA'} adapter`} trained with qtune (\`qtune train\`, train type ${c.train_type}) on \`${c.model ?? ''}\`.`,
    '',
    '## Data',
    '',
    ...data,
    '',
    '## Hyperparameters',
    '',
    '| setting | value |',
    '|---|---|',
    ...hyperparameters(s).map(([k, v]) => `| ${k} | ${String(v)} |`),
    '',
    `Every setting is in \`qtune_config.yaml\`; the log of the run is \`train.log\`, each step's metrics \`metrics.jsonl\`, the loss curves \`loss.png\`.`,
    '',
    '## Results',
    '',
    ...results(s),
    '',
    '## Use it',
    '',
    ...usage(s),
  ].join('\n');
}
