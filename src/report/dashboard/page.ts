/**
 * The dashboard's page: one HTML file with its script inline and uPlot (`/uplot.js`, served from the
 * uplot package) for the charts, so it works with no network. It reads `/api/run`, then follows
 * `/api/events`; when the stream drops it reconnects (the browser's EventSource, with Last-Event-ID),
 * and when the server stops or restarts it tries `/api/run` every 3 s and loads the run again. Each chart's figure carries the number of
 * points it draws (`data-points`, its first series; `data-total`, all), and the body the number of
 * records and the connection state, so a test (or a script) can read the page from its DOM.
 */

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; background: #fafafa; }
header { display: flex; gap: 1em; align-items: baseline; flex-wrap: wrap; }
h1 { font-size: 1.3em; margin: 0.8em 0 0.2em; }
h2 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
#status, #connection { color: #555; }
#summary { font-variant-numeric: tabular-nums; margin: 0.3em 0 0.6em; }
#charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 1em; }
figure.chart { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 0.4em; }
figcaption { font-weight: 600; }
.empty { color: #888; font-style: italic; }
table { border-collapse: collapse; width: 100%; background: #fff; }
td, th { border: 1px solid #ddd; padding: 0.3em 0.5em; vertical-align: top; text-align: left; }
td.text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; }
pre { background: #fff; border: 1px solid #ddd; padding: 0.6em; overflow: auto; max-height: 30em; }
`;

/** The page's script. Plain ES5-style JavaScript: no template literals, so it sits in a TS string. */
const SCRIPT = String.raw`
(function () {
  'use strict';
  var MIB = 1024 * 1024;
  var num = function (v) { return typeof v === 'number' && isFinite(v) ? v : null; };
  var CHARTS = [
    { id: 'loss', title: 'loss', series: [
      { label: 'train', kind: 'step', value: function (r) { return num(r.loss); }, stroke: '#1f77b4' },
      { label: 'validation', kind: 'eval', value: function (r) { return num(r.loss); }, stroke: '#d62728' } ] },
    { id: 'lr', title: 'learning rate', series: [
      { label: 'lr', kind: 'step', value: function (r) { return num(r.lr); }, stroke: '#2ca02c' } ] },
    { id: 'grad_norm', title: 'gradient norm', series: [
      { label: 'grad norm', kind: 'step', value: function (r) { return num(r.grad_norm); }, stroke: '#9467bd' } ] },
    { id: 'tokens_per_s', title: 'tokens/s', series: [
      { label: 'target tokens/s', kind: 'step', value: function (r) { return num(r.tokens_per_s); }, stroke: '#ff7f0e' },
      { label: 'input tokens/s', kind: 'step', value: function (r) { return num(r.input_tokens_per_s); }, stroke: '#8c564b' } ] },
    { id: 'memory', title: 'memory (MiB)', series: [] }
  ];
  // whole steps on the x axis
  var STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000];
  var COLORS = ['#17becf', '#e377c2', '#7f7f7f', '#bcbd22', '#1f77b4', '#d62728', '#2ca02c', '#ff7f0e'];
  var records = [];
  var source = null;
  var plots = {};
  var pending = false;
  var ended = false;

  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function setConnection(state, text) {
    document.body.setAttribute('data-connection', state);
    $('connection').textContent = text;
  }

  // memory: one series per number under a step row's memory (per device when the row has devices)
  function memorySeries() {
    var keys = [];
    records.forEach(function (r) {
      if (r.kind !== 'step' || !r.memory || typeof r.memory !== 'object') return;
      (function walk(o, prefix) {
        Object.keys(o).forEach(function (k) {
          var v = o[k], name = prefix ? prefix + '.' + k : k;
          if (typeof v === 'number') { if (keys.indexOf(name) < 0) keys.push(name); }
          else if (v && typeof v === 'object') walk(v, name);
        });
      })(r.memory, '');
    });
    return keys.map(function (key, i) {
      return { label: key.replace(/_bytes$/, ''), kind: 'step', stroke: COLORS[i % COLORS.length], value: function (r) {
        var v = r.memory;
        key.split('.').forEach(function (k) { v = v && typeof v === 'object' ? v[k] : undefined; });
        return typeof v === 'number' ? v / MIB : null;
      } };
    });
  }

  function chartData(chart) {
    var bySeries = chart.series.map(function () { return {}; });
    var steps = {};
    records.forEach(function (r) {
      chart.series.forEach(function (s, i) {
        if (r.kind !== s.kind) return;
        var v = s.value(r);
        if (v === null) return;
        bySeries[i][r.step] = v;
        steps[r.step] = true;
      });
    });
    var xs = Object.keys(steps).map(Number).sort(function (a, b) { return a - b; });
    var data = [xs];
    bySeries.forEach(function (m) { data.push(xs.map(function (x) { return x in m ? m[x] : null; })); });
    return data;
  }

  function drawChart(chart) {
    if (chart.id === 'memory') chart.series = memorySeries();
    var fig = $('chart-' + chart.id);
    var data = chartData(chart);
    var counts = data.slice(1).map(function (ys) { return ys.filter(function (y) { return y !== null; }).length; });
    fig.setAttribute('data-points', String(counts.length ? counts[0] : 0));
    fig.setAttribute('data-total', String(counts.reduce(function (a, b) { return a + b; }, 0)));
    var box = fig.querySelector('.plot');
    var signature = chart.series.map(function (s) { return s.label; }).join('|');
    var p = plots[chart.id];
    if (p && p.signature !== signature) { p.plot.destroy(); p = null; }
    if (!p) {
      box.textContent = '';
      var opts = {
        width: Math.max(300, box.clientWidth || 420), height: 220,
        scales: { x: { time: false } },
        axes: [{ label: 'step', incrs: STEP_INCRS }, {}],
        series: [{ label: 'step' }].concat(chart.series.map(function (s) {
          return { label: s.label, stroke: s.stroke, width: 1.5, spanGaps: true, points: { show: true, size: 4 } };
        }))
      };
      p = plots[chart.id] = { signature: signature, plot: new uPlot(opts, data, box) };
    } else p.plot.setData(data);
  }

  function fmt(v, digits) { return typeof v === 'number' ? v.toFixed(digits) : '-'; }

  function drawSummary() {
    var steps = records.filter(function (r) { return r.kind === 'step'; });
    var evals = records.filter(function (r) { return r.kind === 'eval'; });
    var last = steps[steps.length - 1], val = evals[evals.length - 1];
    document.body.setAttribute('data-records', String(records.length));
    document.body.setAttribute('data-steps', String(steps.length));
    $('summary').textContent = last === undefined ? 'no step yet' :
      'step ' + last.step + ', epoch ' + fmt(last.epoch, 2) + ', loss ' + fmt(last.loss, 4) +
      (val === undefined ? '' : ', validation loss ' + fmt(val.loss, 4) + ' (step ' + val.step + ')') +
      ', ' + fmt(last.tokens_per_s, 0) + ' tokens/s';
  }

  var SAMPLE_KEYS = ['kind', 'step', 'epoch', 'time', 'prompt', 'completion'];
  function drawSamples() {
    var samples = records.filter(function (r) { return r.kind === 'sample'; });
    var box = $('samples');
    box.setAttribute('data-samples', String(samples.length));
    box.textContent = '';
    if (samples.length === 0) { box.appendChild(el('p', 'No sample generations yet (eval_prompts makes them at each evaluation).', 'empty')); return; }
    var latest = samples.slice(-20).reverse();
    var table = el('table'), head = el('tr');
    ['step', 'prompt', 'completion', 'more'].forEach(function (h) { head.appendChild(el('th', h)); });
    table.appendChild(head);
    latest.forEach(function (s) {
      var tr = el('tr');
      tr.appendChild(el('td', String(s.step)));
      tr.appendChild(el('td', String(s.prompt === undefined ? '' : s.prompt), 'text'));
      tr.appendChild(el('td', String(s.completion === undefined ? '' : s.completion), 'text'));
      var extra = Object.keys(s).filter(function (k) { return SAMPLE_KEYS.indexOf(k) < 0; })
        .map(function (k) { return k + ': ' + (typeof s[k] === 'string' ? s[k] : JSON.stringify(s[k])); });
      tr.appendChild(el('td', extra.join('\n'), 'text'));
      table.appendChild(tr);
    });
    box.appendChild(table);
  }

  function setInfo(info) {
    $('dir').textContent = info.outputDir;
    $('status').textContent = info.running ? 'training' : 'not running';
    var list = $('checkpoints');
    list.textContent = '';
    list.setAttribute('data-checkpoints', String(info.checkpoints.length));
    if (info.checkpoints.length === 0) list.appendChild(el('li', 'none yet', 'empty'));
    info.checkpoints.forEach(function (c) {
      list.appendChild(el('li', c.name + ' (step ' + c.step + ', ' + new Date(c.mtimeMs).toLocaleString() + ')'));
    });
    var placement = $('placement');
    placement.textContent = '';
    if (info.placement.length === 0) placement.appendChild(el('li', 'not known yet', 'empty'));
    info.placement.forEach(function (line) { placement.appendChild(el('li', line)); });
    $('config').textContent = info.config === null ? 'qtune_config.yaml is written when the run ends' : info.config;
  }

  function render() {
    pending = false;
    drawSummary();
    CHARTS.forEach(drawChart);
    drawSamples();
  }
  function schedule() {
    if (!pending) { pending = true; setTimeout(render, 50); }
  }

  function showEnded() {
    setConnection('ended', 'the dashboard stopped with its run; qtune dashboard OUTPUT_DIR shows it again');
  }

  function connect(from) {
    if (source !== null) source.close();
    var es = source = new EventSource('/api/events?from=' + from);
    es.addEventListener('open', function () { setConnection('live', 'live'); });
    es.addEventListener('record', function (e) {
      var id = Number(e.lastEventId);
      if (id < records.length) return; // already here
      if (id > records.length) { load(); return; } // a gap: read the run again
      records.push(JSON.parse(e.data));
      schedule();
    });
    es.addEventListener('run', function (e) { setInfo(JSON.parse(e.data)); });
    es.addEventListener('reset', function () { load(); });
    es.addEventListener('end', function () {
      ended = true;
      es.close();
      showEnded();
      // a qtune dashboard started later on the same port is picked up
      setTimeout(load, 3000);
    });
    es.onerror = function () {
      if (ended) return;
      setConnection('reconnecting', 'connection lost, reconnecting');
      // the browser retries by itself (the server's retry:); a stream it gave up on is opened again
      if (es.readyState === 2) setTimeout(load, 3000);
    };
  }

  function load() {
    fetch('/api/run', { cache: 'no-store' }).then(function (res) {
      if (!res.ok) throw new Error('HTTP ' + res.status);
      return res.json();
    }).then(function (run) {
      ended = false;
      records = run.records;
      setInfo(run);
      render();
      connect(records.length);
    }).catch(function () {
      if (ended) showEnded();
      else setConnection('reconnecting', 'no server, retrying');
      setTimeout(load, 3000);
    });
  }
  load();
})();
`;

const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function figure(id: string, title: string): string {
  return `<figure class="chart" id="chart-${id}" data-points="0" data-total="0"><figcaption>${title}</figcaption><div class="plot"></div></figure>`;
}

/** The page's HTML; `title` is the run folder, shown before the data arrives. */
export function dashboardPage(o: { title: string }): string {
  const title = escapeHtml(o.title);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qtune: ${title}</title>
<link rel="stylesheet" href="/uplot.css">
<style>${STYLE}</style>
<script src="/uplot.js"></script>
</head>
<body data-records="0" data-steps="0" data-connection="connecting">
<header><h1>qtune · <span id="dir">${title}</span></h1><span id="status"></span><span id="connection">connecting</span></header>
<div id="summary">no step yet</div>
<section id="charts">
${figure('loss', 'loss (train, validation)')}
${figure('lr', 'learning rate')}
${figure('grad_norm', 'gradient norm')}
${figure('tokens_per_s', 'tokens/s')}
${figure('memory', 'memory (MiB)')}
</section>
<h2>Latest sample generations</h2>
<div id="samples" data-samples="0"></div>
<h2>Checkpoints</h2>
<ul id="checkpoints" data-checkpoints="0"></ul>
<h2>Device placement</h2>
<ul id="placement"></ul>
<h2>Config</h2>
<pre id="config"></pre>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
