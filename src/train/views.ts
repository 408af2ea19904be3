/**
 * What a Trainer shows of itself beside training (its base class, so that trainer.ts holds the loop):
 * the compiled graphs' nodes, the kernel choices, memory per phase and per device, the step profile.
 */
import type { GraphNode } from '../tensor/graph.js';
import { SteerableRun } from './control.js';
import { peakRss, type DeviceMemory, type MemoryReport } from './memory.js';
import type { Settings } from './options.js';
import type { StepProfile, StepProfiler } from './profile.js';
import { kernelChoiceLines, type KernelChoices, type TrainStep } from './step.js';
import { gradientCheckpointingLine, type ResolvedTrainType } from './train-type.js';

export abstract class TrainerViews extends SteerableRun {
  abstract readonly trainType: ResolvedTrainType;
  abstract readonly settings: Settings;
  protected abstract readonly graphs: TrainStep;
  protected abstract readonly profiler: StepProfiler | null;
  /** Builds the step's graphs (once). */
  protected abstract ensureGraphs(): void;

  /**
   * The nodes of the step's compiled graphs (built on first use): `accumulate` (forward, backward,
   * gradient sums) and `update` (the optimizer), each `MUL_MAT` with its sources' types.
   */
  graphNodes(): { accumulate: GraphNode[]; update: GraphNode[] } {
    this.ensureGraphs();
    return this.graphs.nodes();
  }

  /** What the trainer chose for the frozen base's matmuls; null before the first graph. */
  kernelChoices(): KernelChoices | null {
    return this.graphs.kernelChoices();
  }

  /** {@link kernelChoices} in a line each, for a run's log (nothing before the first graph). */
  kernelChoiceLines(): string[] {
    return kernelChoiceLines(this.graphs.kernelChoices());
  }

  /** One line for a run's startup: `gradient checkpointing: on (default for qlora)`. */
  gradientCheckpointingLine(): string {
    return gradientCheckpointingLine(this.trainType, this.settings);
  }

  /** Memory per phase (measured when the graphs were first built and run). */
  memory(): MemoryReport {
    this.ensureGraphs();
    return { ...this.graphs.memoryReport(), peakRssBytes: peakRss(), devices: this.memoryByDevice() };
  }

  /** What each device holds: weights, adapters, gradients, optimizer state, compute buffers. */
  memoryByDevice(): DeviceMemory[] {
    return this.graphs.memoryByDevice();
  }

  /**
   * The per-op profile of the profiled step (the `profile` option), once that step has run; null
   * without the option or before. Format it with `formatProfile`, write it with `writeProfileTrace`.
   *
   * @example
   * const t = new Trainer(prepared, data, { maxSteps: 3, profile: true });
   * t.train();
   * console.log(formatProfile(t.profile()!).join('\n'));
   */
  profile(): StepProfile | null {
    return this.profiler?.result() ?? null;
  }
}
