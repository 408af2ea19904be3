/**
 * The loss chart: the SVG is well-formed XML-ish markup with both series and the right number of
 * points; the PNG decodes (with a reader written from the PNG specification) to the chart's size and
 * holds pixels of both series' colours, and of the text colour where tick labels are.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import {
  MAX_POINTS,
  niceTicks,
  renderLossPng,
  renderLossSvg,
  type LossSeries,
} from '../../src/report/chart.js';
import { LossChartLogger } from '../../src/report/logger.js';
import { decodePng } from './decode.js';
import { runRecords } from './records.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-chart-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const TRAIN: [number, number, number] = [0x1f, 0x77, 0xb4];
const VALIDATION: [number, number, number] = [0xff, 0x7f, 0x0e];

/** Checks that tags nest and close; returns the elements with their attributes. */
function parseXmlish(svg: string): { name: string; attrs: Record<string, string>; text: string }[] {
  const body = svg.replace(/^<\?xml[^>]*\?>\s*/, '');
  const stack: string[] = [];
  const elements: { name: string; attrs: Record<string, string>; text: string }[] = [];
  const re = /<(\/?)([a-zA-Z][\w-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|([^<]+)/gy;
  let m: RegExpExecArray | null;
  let pos = 0;
  while ((m = re.exec(body)) !== null) {
    pos = re.lastIndex;
    if (m[5] !== undefined) {
      if (elements.length > 0 && stack.length > 0) elements.at(-1)!.text += m[5].trim();
      continue;
    }
    const [, close, name, attrText, selfClose] = m;
    if (close === '/') {
      assert.equal(stack.pop(), name, `</${name}> closes the open element`);
      continue;
    }
    const attrs: Record<string, string> = {};
    for (const a of attrText!.matchAll(/([\w:-]+)="([^"]*)"/g)) attrs[a[1]!] = a[2]!;
    elements.push({ name: name!, attrs, text: '' });
    if (selfClose !== '/') stack.push(name!);
  }
  assert.equal(pos, body.length, `unparsed markup at ${pos}: ${body.slice(pos, pos + 40)}`);
  assert.deepEqual(stack, [], 'every element is closed');
  return elements;
}

const SERIES: LossSeries = {
  train: Array.from({ length: 40 }, (_, i) => ({
    step: i + 1,
    loss: 3 * Math.exp(-i / 15) + 0.1 * Math.sin(i),
  })),
  validation: [10, 20, 30, 40].map((s) => ({ step: s, loss: 3 * Math.exp(-s / 15) + 0.2 })),
};

describe('loss chart', () => {
  it('picks ticks at 1, 2, 5 × 10^k', () => {
    assert.deepEqual(niceTicks(0, 10, 5), [0, 2, 4, 6, 8, 10]);
    assert.deepEqual(niceTicks(0.93, 3.17, 6), [1, 1.5, 2, 2.5, 3]);
    assert.deepEqual(niceTicks(1, 7, 8, true), [1, 2, 3, 4, 5, 6, 7]);
  });

  it('SVG: axes, ticks, labels, both series with their points, a legend', () => {
    const svg = renderLossSvg(SERIES);
    const els = parseXmlish(svg);
    assert.equal(els[0]!.name, 'svg');
    assert.equal(els[0]!.attrs['xmlns'], 'http://www.w3.org/2000/svg');
    const polyline = (id: string) => els.find((e) => e.name === 'polyline' && e.attrs['id'] === id)!;
    const points = (id: string) =>
      polyline(id)
        .attrs['points']!.trim()
        .split(/\s+/)
        .map((p) => p.split(',').map(Number));
    assert.equal(points('train-loss').length, 40);
    assert.equal(points('validation-loss').length, 4);
    assert.equal(polyline('train-loss').attrs['stroke'], '#1f77b4');
    assert.equal(polyline('validation-loss').attrs['stroke'], '#ff7f0e');
    for (const [x, y] of [...points('train-loss'), ...points('validation-loss')]) {
      assert.ok(x! >= 80 && x! <= 776 && y! >= 48 && y! <= 424, `point ${x},${y} inside the plot`);
    }
    // the first loss (the highest) is drawn higher up than the last
    const t = points('train-loss');
    assert.ok(t[0]![1]! < t.at(-1)![1]!);
    const texts = els.filter((e) => e.name === 'text').map((e) => e.text);
    for (const label of ['step', 'loss', 'train', 'validation', '10', '20', '30', '40'])
      assert.ok(texts.includes(label), label);
    assert.ok(
      texts.some((s) => /^\d\.\d$/.test(s)),
      'loss tick labels',
    );
    assert.ok(els.filter((e) => e.name === 'circle').length === 4);
  });

  it('SVG: a long run is drawn with at most MAX_POINTS points', () => {
    const train = Array.from({ length: 10_000 }, (_, i) => ({ step: i + 1, loss: 1 / (i + 1) }));
    const els = parseXmlish(renderLossSvg({ train, validation: [] }));
    const pl = els.find((e) => e.attrs['id'] === 'train-loss')!;
    assert.equal(pl.attrs['points']!.trim().split(/\s+/).length, MAX_POINTS);
  });

  it('PNG: decodes to the chart, with both series drawn in their colours', () => {
    const png = decodePng(renderLossPng(SERIES, { width: 640, height: 400 }));
    assert.equal(png.width, 640);
    assert.equal(png.height, 400);
    const count = (c: readonly number[]): number => {
      let n = 0;
      for (let i = 0; i < png.pixels.length; i += 3)
        if (png.pixels[i] === c[0] && png.pixels[i + 1] === c[1] && png.pixels[i + 2] === c[2]) n++;
      return n;
    };
    const total = png.width * png.height;
    assert.ok(count([255, 255, 255]) > total / 2, 'mostly white background');
    assert.ok(count(TRAIN) > 500, `train pixels: ${count(TRAIN)}`);
    assert.ok(count(VALIDATION) > 200, `validation pixels: ${count(VALIDATION)}`);
    assert.ok(count([0x33, 0x33, 0x33]) > 300, 'tick labels and titles');
    assert.ok(count([0, 0, 0]) > 600, 'axes');
    // the x axis is a black row under the plot
    const row = 400 - 56;
    let black = 0;
    for (let x = 80; x < 640 - 24; x++) if (png.pixels[(row * 640 + x) * 3] === 0) black++;
    assert.ok(black > 500);
  });

  it('LossChartLogger writes loss.svg and loss.png from the records', () => {
    const out = path.join(tmp, 'run');
    const chart = new LossChartLogger(out);
    for (const r of runRecords(10, 5)) chart.log(r);
    chart.close();
    const els = parseXmlish(readFileSync(path.join(out, 'loss.svg'), 'utf8'));
    const pts = (id: string) =>
      els
        .find((e) => e.attrs['id'] === id)!
        .attrs['points']!.trim()
        .split(/\s+/).length;
    assert.equal(pts('train-loss'), 9, 'the skipped step is left out');
    assert.equal(pts('validation-loss'), 2);
    const png = decodePng(readFileSync(path.join(out, 'loss.png')));
    assert.equal(png.width, 800);
  });
});
