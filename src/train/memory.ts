/**
 * Memory of a training run, per phase: the engine's buffers (weights, adapters, gradients, optimizer
 * state, each graph's intermediate tensors) as ggml allocated them, and the process's resident set.
 */
import { readFileSync } from 'node:fs';

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
