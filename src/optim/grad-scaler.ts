/**
 * Dynamic loss scaling for fp16 training, as PyTorch's `torch.amp.GradScaler`: the loss is multiplied
 * by the scale before the backward pass so that small gradients survive in fp16; a step whose
 * gradients overflow (inf or NaN) skips its update and halves the scale, and `growthInterval` steps
 * in a row without overflow double it. Without fp16 the scaler is off: its scale stays 1, and an
 * overflow is an error for the caller to raise.
 *
 * @example
 * const scaler = GradScaler.create(true, { initial: 2 ** 16 });
 * // ... backward of loss × scaler.scale, then the gradient norm ...
 * if (scaler.update(!Number.isFinite(norm)).skipped) console.log(`scale now ${scaler.scale}`);
 */
import { ConfigError } from '../errors.js';

export interface GradScalerOptions {
  /** The first scale (PyTorch's init_scale). Default 2¹⁶. */
  initial?: number;
  /** Steps without overflow that double the scale. Default 2000. */
  growthInterval?: number;
}

/** What {@link GradScaler.update} decided for a step. */
export interface ScalerDecision {
  /** The step's gradients overflowed: its update must be skipped. */
  skipped: boolean;
  /** The scale fell below 1 with the gradients still overflowing: training cannot go on. */
  exhausted: boolean;
}

export class GradScaler {
  /** The multiplier of the loss (1 when off). */
  scale: number;
  /** Steps without overflow since the scale last changed. */
  goodSteps = 0;

  private constructor(
    /** Off (not fp16): the scale stays 1. */
    readonly enabled: boolean,
    scale: number,
    readonly growthInterval: number,
  ) {
    this.scale = scale;
  }

  /** A scaler, on for fp16 (`enabled`) and off otherwise. */
  static create(enabled: boolean, o: GradScalerOptions = {}): GradScaler {
    const interval = o.growthInterval ?? 2000;
    if (enabled && !(Number.isInteger(interval) && interval >= 1))
      throw new ConfigError(
        `loss_scale.growth_interval: ${JSON.stringify(interval)} must be a positive integer`,
        {
          hint: 'set loss_scale.growth_interval to 1 or more',
        },
      );
    return new GradScaler(enabled, enabled ? (o.initial ?? 2 ** 16) : 1, interval);
  }

  /**
   * After a step's gradients are known (an enabled scaler only): on overflow, halve the scale and
   * skip the update; otherwise count the good step, and double the scale after `growthInterval` of
   * them.
   */
  update(overflow: boolean): ScalerDecision {
    if (overflow) {
      this.scale /= 2;
      this.goodSteps = 0;
      return { skipped: true, exhausted: this.scale < 1 };
    }
    if (++this.goodSteps >= this.growthInterval) {
      this.scale *= 2;
      this.goodSteps = 0;
    }
    return { skipped: false, exhausted: false };
  }
}
