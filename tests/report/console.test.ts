/**
 * Console progress written into a collecting stream: the terminal mode redraws one line in place
 * (step/total, bar, loss, lr, tokens/s, ETA) with events printed above it; the plain mode prints a
 * line every N steps or every 10 s, and always evaluations, skips and checkpoints.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConsoleProgress, formatDuration } from '../../src/report/console.js';
import { TextCollector, resultOf, runRecords } from './records.js';

describe('console progress', () => {
  it('formats durations', () => {
    assert.equal(formatDuration(5), '5s');
    assert.equal(formatDuration(65), '1m05s');
    assert.equal(formatDuration(3 * 3600 + 7 * 60 + 20), '3h07m');
    assert.equal(formatDuration(NaN), '?');
  });

  it('in a terminal: one line redrawn in place, events above it', () => {
    const out = new TextCollector(120);
    let t = 0;
    const p = new ConsoleProgress({ totalSteps: 10, stream: out, tty: true, redrawMs: 0, now: () => t });
    const records = runRecords(10, 5);
    for (const r of records) {
      if (r.kind === 'step' || r.kind === 'skip') t += 2000; // 2 s a step
      p.log(r);
    }
    p.close(resultOf(records));
    const text = out.text;
    // redraws: carriage return and erase-line, no newline between two step redraws
    const redraws = text.split('\r\x1b[2K').slice(1);
    assert.ok(redraws.length >= 10, `${redraws.length} redraws`);
    const step4 = redraws.find((s) => s.startsWith(' 4/10'))!;
    assert.ok(step4 !== undefined, text);
    assert.ok(!step4.includes('\n'), 'a progress redraw is one line without a newline');
    assert.match(step4, /^ 4\/10 \[█+░+\] loss 2\.2000 {2}lr 8\.00e-4 {2}1,004 tok\/s {2}ETA 12s$/);
    assert.ok(step4.length <= 120);
    // events are permanent lines
    const CLEAR = '\r\x1b[2K';
    assert.ok(text.includes(`${CLEAR}eval  step 5  loss 2.1500  perplexity 8.585\n`));
    assert.ok(text.includes(`${CLEAR}skip  step 3  gradients overflowed`));
    assert.ok(text.includes(`${CLEAR}saved step 10  /tmp/out/checkpoint-10\n`));
    assert.match(text, /10\/10 \[█+\] loss 1\.0000 .* ETA 0s\ndone: 10 steps in 12s/);
  });

  it('in a terminal, a narrow one: the line still fits', () => {
    const out = new TextCollector(50);
    const p = new ConsoleProgress({ totalSteps: 1000, stream: out, tty: true, now: () => 0 });
    p.log(runRecords(1)[0]!);
    const line = out.text.split('\r\x1b[2K')[1]!;
    assert.ok(line.length < 50, line);
    assert.match(line, /^ {3}1\/1000/);
  });

  it('in a terminal: redraws at most every redrawMs', () => {
    const out = new TextCollector(120);
    const p = new ConsoleProgress({ totalSteps: 100, stream: out, tty: true, redrawMs: 100, now: () => 0 });
    for (const r of runRecords(50, 1000).filter((r) => r.kind === 'step')) p.log(r);
    // the first draw only: the clock did not move
    assert.equal(out.text.split('\r\x1b[2K').length - 1, 1);
  });

  it('in CI logs: plain lines every N steps, and always the events', () => {
    const out = new TextCollector();
    let t = 0;
    const p = new ConsoleProgress({ totalSteps: 10, stream: out, tty: false, everySteps: 4, now: () => t });
    const records = runRecords(10, 5);
    for (const r of records) {
      if (r.kind === 'step') t += 1000;
      p.log(r);
    }
    p.close(resultOf(records));
    assert.ok(!out.text.includes('\r') && !out.text.includes('\x1b'), 'no terminal codes');
    const lines = out.text.trimEnd().split('\n');
    assert.deepEqual(
      lines.map((l) => l.split('  ')[0]),
      [
        'step 1/10',
        'skip',
        'step 5/10',
        'eval',
        'step 9/10',
        'step 10/10',
        'eval',
        'saved step 10',
        'done: 10 steps in 12s, 1,000 tok/s, final loss 1.0000, validation loss 1.4000',
      ],
    );
    assert.match(
      lines[0]!,
      /^step 1\/10 {2}epoch 0\.10 {2}loss 2\.8000 {2}lr 9\.50e-4 {2}grad_norm 1\.100 {2}1,001 tok\/s {2}ETA 9s$/,
    );
  });

  it('in CI logs: a line at least every 10 seconds', () => {
    const out = new TextCollector();
    let t = 0;
    const p = new ConsoleProgress({ totalSteps: 1000, stream: out, tty: false, now: () => t });
    const steps30 = runRecords(30, 1000).filter((r) => r.kind !== 'checkpoint');
    for (const r of steps30.map((r) => ({ ...r, kind: 'step' as const }))) {
      t += 3000; // 3 s a step: every fourth step is 12 s after the last line
      p.log(r);
    }
    const steps = out.text
      .trimEnd()
      .split('\n')
      .map((l) => Number(/^step (\d+)/.exec(l)![1]));
    assert.deepEqual(steps, [1, 5, 9, 13, 17, 21, 25, 29]);
  });
});
