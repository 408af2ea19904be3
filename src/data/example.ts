/**
 * What the data layer hands the Trainer: training sequences of token ids and labels. They live here,
 * under the code that makes them (tokenize, pack, load a dataset), so that data/ does not import
 * train/ (DESIGN.md §4).
 */

/** One training sequence: token ids and next-token labels (-100 where no loss is counted). */
export interface Example {
  ids: Int32Array;
  labels: Int32Array;
  /**
   * Packed samples (src/data/packing.ts): the sample id of each position. Positions attend only to
   * earlier positions of the same id (a block-diagonal causal mask); without it, to all earlier ones.
   */
  segments?: Int32Array;
  /**
   * Positions that hold the sample (or the packed samples); the rest, up to `ids.length`, is padding
   * (labels -100). Absent: every position. Dynamic padding cuts a micro-batch to its longest example.
   */
  length?: number;
  /** Paired preference objectives (DPO...): the rejected completion of this (chosen) example. */
  rejected?: Example;
}

export interface TrainData {
  train: readonly Example[];
  validation?: readonly Example[];
  /** Where the examples came from (the dataset file or Hub id), for messages: `loadDataset` sets it. */
  source?: string;
}
