/**
 * The loss curve of a run as a picture: training loss per step and validation loss per evaluation on
 * one pair of axes, as SVG (text) and PNG (rasterised here, see png.ts). Both share one layout.
 */
import { Canvas, encodePng, GLYPH_H, hexRgb } from './png.js';

export interface LossPoint {
  step: number;
  loss: number;
}

export interface LossSeries {
  train: readonly LossPoint[];
  validation: readonly LossPoint[];
}

export const TRAIN_COLOR = '#1f77b4';
export const VALIDATION_COLOR = '#ff7f0e';
const AXIS_COLOR = '#000000';
const GRID_COLOR = '#e0e0e0';
const TEXT_COLOR = '#333333';

/** Series longer than this are drawn as the means of equal buckets of steps. */
export const MAX_POINTS = 2000;

interface Layout {
  width: number;
  height: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
  xTicks: number[];
  yTicks: number[];
  xLabel: (v: number) => string;
  yLabel: (v: number) => string;
  x: (step: number) => number;
  y: (loss: number) => number;
  train: LossPoint[];
  validation: LossPoint[];
}

/** Ticks at 1, 2 or 5 × 10^k covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, target = 6, integer = false): number[] {
  let span = hi - lo;
  if (!(span > 0)) span = Math.abs(lo) || 1;
  const raw = span / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  let step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
  if (integer) step = Math.max(1, Math.round(step));
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step)
    ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function tickFormatter(ticks: readonly number[]): (v: number) => string {
  const step = ticks.length > 1 ? Math.abs(ticks[1]! - ticks[0]!) : 1;
  const decimals = Math.min(8, Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
  const big = Math.max(...ticks.map(Math.abs)) >= 1e6;
  return (v) => (big ? v.toPrecision(3) : v.toFixed(decimals));
}

function finite(points: readonly LossPoint[]): LossPoint[] {
  return points.filter((p) => Number.isFinite(p.step) && Number.isFinite(p.loss));
}

/** Means of `max` buckets of consecutive points, when there are more than `max`. */
export function downsample(points: readonly LossPoint[], max = MAX_POINTS): LossPoint[] {
  if (points.length <= max) return [...points];
  const out: LossPoint[] = [];
  for (let b = 0; b < max; b++) {
    const from = Math.floor((b * points.length) / max);
    const to = Math.floor(((b + 1) * points.length) / max);
    let s = 0;
    let l = 0;
    for (let i = from; i < to; i++) {
      s += points[i]!.step;
      l += points[i]!.loss;
    }
    out.push({ step: s / (to - from), loss: l / (to - from) });
  }
  return out;
}

function layout(series: LossSeries, width: number, height: number): Layout {
  const train = downsample(finite(series.train));
  const validation = downsample(finite(series.validation));
  const all = [...train, ...validation];
  let xMin = all.length ? Math.min(...all.map((p) => p.step)) : 0;
  let xMax = all.length ? Math.max(...all.map((p) => p.step)) : 1;
  if (xMax <= xMin) {
    xMin -= 1;
    xMax += 1;
  }
  let yMin = all.length ? Math.min(...all.map((p) => p.loss)) : 0;
  let yMax = all.length ? Math.max(...all.map((p) => p.loss)) : 1;
  const pad = (yMax - yMin) * 0.05 || Math.abs(yMax) * 0.05 || 1;
  yMin -= pad;
  yMax += pad;
  const xTicks = niceTicks(xMin, xMax, 8, true).filter((t) => t >= xMin && t <= xMax);
  const yTicks = niceTicks(yMin, yMax, 6).filter((t) => t >= yMin && t <= yMax);
  const left = 80;
  const right = width - 24;
  const top = 48;
  const bottom = height - 56;
  return {
    width,
    height,
    left,
    right,
    top,
    bottom,
    xTicks,
    yTicks,
    xLabel: tickFormatter(xTicks),
    yLabel: tickFormatter(yTicks),
    x: (s) => left + ((s - xMin) / (xMax - xMin)) * (right - left),
    y: (l) => bottom - ((l - yMin) / (yMax - yMin)) * (bottom - top),
    train,
    validation,
  };
}

const r1 = (v: number): string => String(Math.round(v * 10) / 10);

function xmlEscape(s: string): string {
  return s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The chart as an SVG document. Series are `<polyline>`s with ids train-loss and validation-loss. */
export function renderLossSvg(
  series: LossSeries,
  options: { width?: number; height?: number; title?: string } = {},
): string {
  const L = layout(series, options.width ?? 800, options.height ?? 480);
  const o: string[] = [];
  o.push(
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${L.width}" height="${L.height}" viewBox="0 0 ${L.width} ${L.height}" font-family="sans-serif" font-size="12">`,
    `<rect x="0" y="0" width="${L.width}" height="${L.height}" fill="#ffffff"/>`,
    `<text x="${L.width / 2}" y="24" text-anchor="middle" font-size="16" fill="${TEXT_COLOR}">${xmlEscape(options.title ?? 'loss')}</text>`,
  );
  o.push(`<g id="grid" stroke="${GRID_COLOR}" stroke-width="1">`);
  for (const t of L.yTicks)
    o.push(`<line x1="${L.left}" y1="${r1(L.y(t))}" x2="${L.right}" y2="${r1(L.y(t))}"/>`);
  for (const t of L.xTicks)
    o.push(`<line x1="${r1(L.x(t))}" y1="${L.top}" x2="${r1(L.x(t))}" y2="${L.bottom}"/>`);
  o.push(`</g>`);
  o.push(
    `<g id="axes" stroke="${AXIS_COLOR}" stroke-width="1">`,
    `<line x1="${L.left}" y1="${L.bottom}" x2="${L.right}" y2="${L.bottom}"/>`,
    `<line x1="${L.left}" y1="${L.top}" x2="${L.left}" y2="${L.bottom}"/>`,
  );
  for (const t of L.xTicks)
    o.push(`<line x1="${r1(L.x(t))}" y1="${L.bottom}" x2="${r1(L.x(t))}" y2="${L.bottom + 5}"/>`);
  for (const t of L.yTicks)
    o.push(`<line x1="${L.left - 5}" y1="${r1(L.y(t))}" x2="${L.left}" y2="${r1(L.y(t))}"/>`);
  o.push(`</g>`, `<g id="tick-labels" fill="${TEXT_COLOR}">`);
  for (const t of L.xTicks)
    o.push(`<text x="${r1(L.x(t))}" y="${L.bottom + 20}" text-anchor="middle">${L.xLabel(t)}</text>`);
  for (const t of L.yTicks)
    o.push(`<text x="${L.left - 8}" y="${r1(L.y(t) + 4)}" text-anchor="end">${L.yLabel(t)}</text>`);
  o.push(
    `</g>`,
    `<text x="${(L.left + L.right) / 2}" y="${L.height - 14}" text-anchor="middle" fill="${TEXT_COLOR}">step</text>`,
    `<text x="20" y="${(L.top + L.bottom) / 2}" text-anchor="middle" fill="${TEXT_COLOR}" transform="rotate(-90 20 ${(L.top + L.bottom) / 2})">loss</text>`,
  );
  const pts = (ps: readonly LossPoint[]): string =>
    ps.map((p) => `${r1(L.x(p.step))},${r1(L.y(p.loss))}`).join(' ');
  o.push(
    `<polyline id="train-loss" fill="none" stroke="${TRAIN_COLOR}" stroke-width="2" stroke-linejoin="round" points="${pts(L.train)}"/>`,
    `<polyline id="validation-loss" fill="none" stroke="${VALIDATION_COLOR}" stroke-width="2" stroke-linejoin="round" points="${pts(L.validation)}"/>`,
    `<g id="validation-points" fill="${VALIDATION_COLOR}">`,
  );
  for (const p of L.validation) o.push(`<circle cx="${r1(L.x(p.step))}" cy="${r1(L.y(p.loss))}" r="3"/>`);
  o.push(`</g>`);
  const lx = L.right - 150;
  const ly = L.top + 8;
  o.push(
    `<g id="legend" fill="${TEXT_COLOR}">`,
    `<rect x="${lx - 8}" y="${ly - 6}" width="150" height="48" fill="#ffffff" stroke="${GRID_COLOR}"/>`,
    `<line x1="${lx}" y1="${ly + 8}" x2="${lx + 24}" y2="${ly + 8}" stroke="${TRAIN_COLOR}" stroke-width="2"/>`,
    `<text x="${lx + 32}" y="${ly + 12}">train</text>`,
    `<line x1="${lx}" y1="${ly + 28}" x2="${lx + 24}" y2="${ly + 28}" stroke="${VALIDATION_COLOR}" stroke-width="2"/>`,
    `<text x="${lx + 32}" y="${ly + 32}">validation</text>`,
    `</g>`,
    `</svg>`,
    '',
  );
  return o.join('\n');
}

/** The same chart rasterised into a PNG. */
export function renderLossPng(
  series: LossSeries,
  options: { width?: number; height?: number } = {},
): Uint8Array {
  const L = layout(series, options.width ?? 800, options.height ?? 480);
  const c = new Canvas(L.width, L.height);
  const grid = hexRgb(GRID_COLOR);
  const axis = hexRgb(AXIS_COLOR);
  const text = hexRgb(TEXT_COLOR);
  const train = hexRgb(TRAIN_COLOR);
  const val = hexRgb(VALIDATION_COLOR);
  const S = 2; // font scale
  for (const t of L.yTicks) c.line(L.left, L.y(t), L.right, L.y(t), grid);
  for (const t of L.xTicks) c.line(L.x(t), L.top, L.x(t), L.bottom, grid);
  c.line(L.left, L.bottom, L.right, L.bottom, axis);
  c.line(L.left, L.top, L.left, L.bottom, axis);
  for (const t of L.xTicks) {
    c.line(L.x(t), L.bottom, L.x(t), L.bottom + 5, axis);
    const s = L.xLabel(t);
    c.text(L.x(t) - Canvas.textWidth(s, S) / 2, L.bottom + 10, s, text, S);
  }
  for (const t of L.yTicks) {
    c.line(L.left - 5, L.y(t), L.left, L.y(t), axis);
    const s = L.yLabel(t);
    c.text(L.left - 10 - Canvas.textWidth(s, S), L.y(t) - (GLYPH_H * S) / 2, s, text, S);
  }
  c.text((L.left + L.right) / 2 - Canvas.textWidth('step', S) / 2, L.height - 22, 'step', text, S);
  c.text(L.left - Canvas.textWidth('loss', S) / 2, L.top - 26, 'loss', text, S);
  const polyline = (ps: readonly LossPoint[], col: readonly [number, number, number]): void => {
    for (let i = 1; i < ps.length; i++)
      c.line(L.x(ps[i - 1]!.step), L.y(ps[i - 1]!.loss), L.x(ps[i]!.step), L.y(ps[i]!.loss), col, 2);
  };
  polyline(L.train, train);
  if (L.train.length === 1) c.fillRect(L.x(L.train[0]!.step) - 2, L.y(L.train[0]!.loss) - 2, 5, 5, train);
  polyline(L.validation, val);
  for (const p of L.validation) c.fillRect(L.x(p.step) - 3, L.y(p.loss) - 3, 7, 7, val);
  const lx = L.right - 170;
  const ly = L.top + 4;
  c.fillRect(lx - 8, ly - 6, 170, 52, [255, 255, 255]);
  c.line(lx, ly + 8, lx + 24, ly + 8, train, 2);
  c.text(lx + 32, ly + 8 - GLYPH_H, 'train', text, S);
  c.line(lx, ly + 30, lx + 24, ly + 30, val, 2);
  c.text(lx + 32, ly + 30 - GLYPH_H, 'validation', text, S);
  return encodePng(c);
}
