/**
 * Memory of a training run, per phase: the engine's buffers (weights, adapters, gradients, optimizer
 * state, each graph's intermediate tensors) as ggml allocated them, and the process's resident set.
 */
import { readFileSync } from 'node:fs';
import { formatBytes } from '../engine/memory.js';
import { OutOfMemoryError } from '../errors.js';
import type { LlamaConfig } from '../models/config.js';

export interface PhaseMemory {
  /** Bytes of every engine buffer the run holds at this point. */
  engineBytes: number;
  /** Resident set size of the process. */
  rssBytes: number;
}

export interface MemoryReport {
  /** After loading the model and creating the adapters, gradients and optimizer state. */
  load: PhaseMemory;
  /** Plus a forward pass at the training batch shape (its intermediate tensors). */
  forward: PhaseMemory;
  /** Plus forward and backward (one ggml graph: the activations kept for backward and the gradients). */
  backward: PhaseMemory;
  /** Plus the optimizer step's graph. */
  optimizer: PhaseMemory;
  /** Highest resident set size of the process so far. */
  peakRssBytes: number;
  /** The same buffers per device, with the blocks each holds. */
  devices: DeviceMemory[];
  /** The parts, in bytes. */
  parts: {
    weights: number;
    trainable: number;
    gradients: number;
    optimizerState: number;
    activations: number;
  };
}

/** What a run holds on one device (a model split over devices has one of these per device). */
export interface DeviceMemory {
  device: string;
  /** Decoder blocks whose weights live here. */
  blocks: number[];
  /** Whether the embeddings, the final norm and the LM head live here. */
  head: boolean;
  /** Bytes of the model's weights. */
  weights: number;
  /** LoRA/DoRA tensors. */
  adapters: number;
  gradients: number;
  optimizerState: number;
  /** The compute buffers of the training, evaluation and update graphs, and their inputs. */
  compute: number;
  total: number;
}

/** Peak resident set size: VmHWM on Linux, else the runtime's maxRSS. */
export function peakRss(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m !== null) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS * 1024;
}

export function rss(): number {
  return process.memoryUsage().rss;
}

/** The shapes one training step's memory depends on. */
export interface StepShape {
  batchSize: number;
  /** Tokens per sequence (the context length). */
  seqLen: number;
  gradientAccumulationSteps: number;
  gradientCheckpointing: boolean;
  /** The frozen base is quantized (qlora and the like). */
  quantized: boolean;
  /**
   * Token rows per chunk of the fused output layer and loss (the trainer's crossEntropyChunk); absent
   * or 0: the logits are computed whole.
   */
  crossEntropyChunk?: number;
}

/** Most chunks the fused output layer and loss split a micro-batch into (each costs ~35 graph nodes). */
export const MAX_CROSS_ENTROPY_CHUNKS = 64;

/**
 * Token rows whose logits exist at once in a step of `tokens` token rows: all of them with a chunk of 0,
 * else the chunk, raised so that there are at most {@link MAX_CROSS_ENTROPY_CHUNKS} chunks.
 */
export function crossEntropyRows(tokens: number, chunk: number): number {
  if (chunk === 0) return tokens;
  return Math.min(tokens, Math.max(chunk, Math.ceil(tokens / MAX_CROSS_ENTROPY_CHUNKS)));
}

/**
 * A lower bound of the bytes one training step's activations take, from the shapes alone: the f32
 * logits (B·T·vocab, or a chunk of rows·vocab with the fused loss), the input of every decoder block
 * (B·T·hidden, kept for the backward pass with or without gradient checkpointing) and one layer's
 * attention scores (B·heads·T·T).
 */
export function stepActivationsLowerBound(c: LlamaConfig, s: StepShape): number {
  const { batchSize: b, seqLen: t } = s;
  const logitRows = crossEntropyRows(b * t, s.crossEntropyChunk ?? 0);
  return (
    4 * logitRows * c.vocab_size +
    4 * b * t * (c.num_hidden_layers * c.hidden_size + c.num_attention_heads * t)
  );
}

/**
 * The error for a step that does not fit: it names the batch shape, what the step needs (`exact`:
 * as ggml measured its graph; else the lower bound) and what the device has, and the ways to need less.
 */
export function stepMemoryError(
  s: StepShape,
  device: string,
  needed: number,
  free: number,
  exact: boolean,
): OutOfMemoryError {
  const advice = [
    `lower batch_size and raise gradient_accumulation_steps (now ${s.gradientAccumulationSteps}) to keep the effective batch`,
    'shorten context_length',
    ...(s.quantized ? [] : ['quantize the frozen base (train_type qlora)']),
    ...(s.gradientCheckpointing ? [] : ['turn on gradient_checkpointing']),
  ];
  return new OutOfMemoryError(
    `batch_size ${s.batchSize} × context_length ${s.seqLen}: ${exact ? "the training step's intermediate tensors need" : 'one training step needs at least'} ${formatBytes(needed)} on ${device}, which has ${formatBytes(free)} available`,
    {
      hint: advice.join(', or '),
      details: { device, needed, free, batchSize: s.batchSize, seqLen: s.seqLen },
    },
  );
}
