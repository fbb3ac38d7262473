// kvtune's web page: the jobs, one job (its Pareto plot and sensitivity map
// refreshed while it runs), the registry and the workers. Everything comes
// from the coordinator's JSON API (README "HTTP API"), relative to this page;
// the plots are the report's SVGs (GET v1/jobs/{id}/pareto.svg and
// sensitivity.svg), inlined. No framework, nothing loaded from elsewhere.
//
// Token: with `kvtune coordinator --api-token`, an API answer 401 shows a form;
// the token is kept in sessionStorage (this tab only) and sent as
// "Authorization: Bearer", never in a URL the server sees. A link may hand it
// over in its fragment, "#/jobs?token=T" (fragments are not sent): the page
// stores it and removes it from the address bar at once.
//
// For scripts and tests the DOM says what is shown: the job view is
// <section id="job" data-state="queued|running|done|failed|cancelled"
// data-points="N"> (N frontier configs in the job's JSON), every plotted
// frontier config is a <circle class="frontier">, the token form has
// id="token-form".
'use strict';

(() => {
  const TOKEN_KEY = 'kvtune.api-token';
  const POLL_MS = 1500;  // the jobs, a running job, the workers
  const REGISTRY_POLL_MS = 5000;
  const RETRY_MS = 3000;  // after a failed request

  // ---- DOM helpers -------------------------------------------------------

  // h('td', {class: 'num'}, 'text', node, [more]): an element; text is never parsed as HTML.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c !== undefined && c !== null && c !== false) el.append(c);
    }
    return el;
  }
  const $ = (id) => document.getElementById(id);
  // el.replaceChildren, skipping null/false/undefined (which it would write as text).
  const put = (el, ...children) =>
    el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));

  function notice(text) {
    const n = $('notice');
    n.textContent = text || '';
    n.hidden = !text;
  }

  // ---- numbers -----------------------------------------------------------

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const bits = (v) => (isNum(v) ? v.toFixed(3) : '');
  function kl(v) {
    if (!isNum(v)) return '';
    if (v === 0) return '0';
    return Math.abs(v) < 1e-3 ? v.toExponential(2) : v.toPrecision(3);
  }
  const ratio = (v) => (isNum(v) ? v.toFixed(3) : '');
  function bytes(v) {
    if (!isNum(v) || v <= 0) return '';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + ' ' + units[i];
  }
  function ago(ms) {
    if (!isNum(ms)) return '';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    return (s / 3600).toFixed(1) + ' h ago';
  }
  const when = (ms) => (isNum(ms) && ms > 0 ? new Date(ms).toLocaleString() : '');
  // A config as the CLI and the report name it (report::short_config_name):
  // a uniform config's one pair, "(all layers)", else its runs of pairs
  // ("KV8*2,K8V4,KV4*3"); llama.cpp's types without their "llama.cpp:".
  function shortLayers(layers) {
    if (!layers) return '';
    let parts = String(layers).split(',');
    if (parts.every((p) => p.includes('llama.cpp:'))) {
      parts = parts.map((p) => p.split('llama.cpp:').join(''));
    }
    const runs = [];
    for (const p of parts) {
      const last = runs[runs.length - 1];
      if (last && last[0] === p) last[1] += 1;
      else runs.push([p, 1]);
    }
    if (runs.length === 1) return runs[0][0] + ' (all layers)';
    return runs.map(([p, n]) => (n > 1 ? p + '*' + n : p)).join(',');
  }
  const active = (state) => state === 'queued' || state === 'running';

  // ---- the API -----------------------------------------------------------

  class AuthError extends Error {}
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  let memoryToken = '';  // where sessionStorage is disabled
  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (e) {
      return '';
    }
  }
  function setToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // storage disabled: the token lives until the page is reloaded
    }
    memoryToken = t || '';
  }

  // GET `path` (relative to the page, e.g. "v1/jobs"); JSON, or text when `asText`.
  async function api(path, asText) {
    const headers = {};
    const t = token() || memoryToken;
    if (t) headers.Authorization = 'Bearer ' + t;
    let r;
    try {
      r = await fetch(path, {headers, cache: 'no-store', credentials: 'omit'});
    } catch (e) {
      throw new Error('cannot reach the coordinator (' + e.message + ')');
    }
    if (r.status === 401) throw new AuthError(t ? 'the token was refused' : 'a token is needed');
    const body = await r.text();
    if (!r.ok) {
      let message = body;
      try {
        message = JSON.parse(body).error || body;
      } catch (e) {
        // not JSON: the text as it came
      }
      throw new ApiError(r.status, 'GET ' + path + ': ' + r.status + ' ' + message);
    }
    return asText ? body : JSON.parse(body);
  }
  const enc = encodeURIComponent;

  // ---- routing -----------------------------------------------------------

  // "#/jobs/ID?token=T" -> {path: ['jobs', 'ID']}; a token in the fragment is
  // stored and taken out of the address bar (and history) at once.
  function readHash() {
    const raw = location.hash.replace(/^#/, '');
    const q = raw.indexOf('?');
    let path = q < 0 ? raw : raw.slice(0, q);
    let query = q < 0 ? '' : raw.slice(q + 1);
    if (q < 0 && path.includes('=')) {  // "#token=T"
      query = path;
      path = '';
    }
    const kept = [];
    let handed = null;
    for (const item of query.split('&')) {
      if (!item) continue;
      if (item.startsWith('token=')) handed = item.slice(6);
      else kept.push(item);
    }
    if (handed !== null) {
      try {
        setToken(decodeURIComponent(handed));
      } catch (e) {
        setToken(handed);
      }
      const hash = '#' + path + (kept.length ? '?' + kept.join('&') : '');
      history.replaceState(null, '', location.pathname + location.search + hash);
    }
    return {path: path.split('/').filter(Boolean).map((p) => decodeURIComponent(p))};
  }

  let generation = 0;  // a new view makes the old one's pending refreshes stale
  let timer = null;

  function navigate() {
    const gen = ++generation;
    clearTimeout(timer);
    notice('');
    const route = readHash();
    const [section, id] = route.path.length ? route.path : ['jobs'];
    for (const a of document.querySelectorAll('header nav a')) {
      a.classList.toggle('active', a.dataset.nav === section);
    }
    showAuth();
    const ctx = {live: () => gen === generation};
    const main = $('view');
    let view;
    if (section === 'jobs' && id) view = jobView(ctx, id);
    else if (section === 'jobs') view = jobsView(ctx);
    else if (section === 'registry') view = registryView(ctx);
    else if (section === 'workers') view = workersView(ctx);
    else view = {root: h('section', {class: 'view'}, h('h1', {}, 'No such page'),
                         h('p', {}, h('a', {href: '#/jobs'}, 'the jobs'))),
                 refresh: async () => null};
    main.replaceChildren(view.root);
    document.title = 'kvtune · ' + (id ? 'job ' + id : section);
    loop(ctx, view);
  }

  // Refreshes `view` until it says it is done (null) or another view is shown.
  async function loop(ctx, view) {
    let delay;
    try {
      delay = await view.refresh();
      if (ctx.live()) notice('');
    } catch (e) {
      if (!ctx.live()) return;
      if (e instanceof AuthError) return tokenForm(e.message);
      notice(e.message + ' (retrying)');
      delay = RETRY_MS;
    }
    if (ctx.live() && delay) timer = setTimeout(() => loop(ctx, view), delay);
  }

  function showAuth() {
    const el = $('auth');
    if (!(token() || memoryToken)) return el.replaceChildren();
    el.replaceChildren('API token set',
                       h('button', {class: 'small', type: 'button', onclick: () => {
                         setToken('');
                         navigate();
                       }}, 'Forget'));
  }

  function tokenForm(reason) {
    const wrong = reason === 'the token was refused';
    const input = h('input', {type: 'password', name: 'token', autocomplete: 'current-password',
                              placeholder: 'API token', 'aria-label': 'API token', required: true});
    const form = h('form', {class: 'token', method: 'post', action: '#', onsubmit: (ev) => {
      ev.preventDefault();
      setToken(input.value.trim());
      navigate();
    }}, h('input', {type: 'text', name: 'username', autocomplete: 'username', value: 'kvtune API',
                    hidden: true, 'aria-hidden': 'true'}),
    input, h('button', {type: 'submit'}, 'Use token'));
    $('view').replaceChildren(h('section', {id: 'token-form', class: 'view card'},
        h('h2', {}, 'This coordinator needs its API token'),
        h('p', {class: 'muted'},
          'It was started with --api-token. The token is kept in this browser tab only ' +
          '(sessionStorage) and sent as a bearer token, never in a URL.'),
        wrong ? h('p', {class: 'error-text'}, 'The token was refused: try again.') : null,
        form));
    input.focus();
  }

  // ---- pieces --------------------------------------------------------------

  function badge(text, cls) {
    return h('span', {class: 'badge ' + (cls || text)}, text);
  }

  function progressOf(job) {
    const p = job.progress || {};
    const total = Math.max(p.total || 0, p.done || 0);
    return h('span', {class: 'progress'},
             h('progress', {max: total || 1, value: active(job.state) ? p.done || 0 : total || 1}),
             h('span', {}, (p.done || 0) + ' / ' + total + (p.failed ? ', ' + p.failed + ' failed' : '')),
             p.phase && active(job.state) ? h('span', {class: 'muted'}, p.phase) : null);
  }

  function table(headers, rows, attrs) {
    return h('div', {class: 'table-wrap'},
             h('table', attrs || {},
               h('thead', {}, h('tr', {}, headers.map(([label, cls]) => h('th', {class: cls}, label)))),
               h('tbody', {}, rows)));
  }

  function facts(pairs) {
    return h('dl', {class: 'facts'},
             pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
                 .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  }

  // The report's SVG text as a node of this page.
  function svgNode(text) {
    const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
    const svg = doc.documentElement;
    if (svg.localName !== 'svg' || doc.getElementsByTagName('parsererror').length) {
      throw new Error('the plot is not an SVG picture');
    }
    return document.importNode(svg, true);
  }

  // A copyable text: a read-only text area and a Copy button.
  function copyable(text, label) {
    const area = h('textarea', {readonly: true, spellcheck: 'false', 'aria-label': label,
                                rows: Math.min(10, text.split('\n').length + 1)});
    area.textContent = text;  // its default value: also in the DOM's text
    const said = h('span', {class: 'muted'});
    const button = h('button', {type: 'button', onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
      } catch (e) {  // no clipboard API (plain http off localhost): select and copy
        area.focus();
        area.select();
        document.execCommand('copy');
      }
      said.textContent = 'copied';
      setTimeout(() => (said.textContent = ''), 1500);
    }}, 'Copy');
    return h('div', {class: 'export'}, area, h('div', {class: 'bar'}, button, said));
  }

  // Tabs of exports [{format, file, text, deploy}], one shown at a time.
  function exportTabs(list, refused) {
    const box = h('div', {class: 'exports'});
    if (!list.length) {
      box.append(h('p', {class: 'muted'}, 'No export format can express this config.'));
    } else {
      const tabs = h('div', {class: 'tabs'});
      const shown = h('div');
      const pick = (i) => {
        tabs.querySelectorAll('button').forEach((b, j) => b.classList.toggle('active', i === j));
        const e = list[i];
        shown.replaceChildren(
            h('p', {class: 'muted'}, e.deploy ? 'The engine\'s deploy command (' + e.format + ')'
                                              : 'Format ' + e.format + (e.file ? ', file ' + e.file : '')),
            copyable(e.text, e.format));
      };
      list.forEach((e, i) => tabs.append(h('button', {type: 'button', 'data-format': e.format,
                                                      onclick: () => pick(i)},
                                           e.deploy ? 'deploy: ' + e.format : e.format)));
      box.append(tabs, shown);
      pick(0);
    }
    if (refused && refused.length) {
      box.append(h('p', {class: 'refused muted'}, 'Not expressible in: ',
                   refused.map((r, i) => [i ? ', ' : '', h('span', {title: r.error}, r.format)])));
    }
    return box;
  }

  function metricCells(m) {
    m = m || {};
    return [h('td', {class: 'num'}, bits(m.avg_bits)), h('td', {class: 'num'}, kl(m.kl)),
            h('td', {class: 'num'}, kl(m.delta_nll)), h('td', {class: 'num'}, ratio(m.top1_agreement))];
  }
  const metricHeads = [['avg bits', 'num'], ['KL', 'num'], ['ΔNLL', 'num'], ['top-1', 'num']];

  // ---- the jobs ------------------------------------------------------------

  function jobsView(ctx) {
    const summary = h('span', {class: 'muted'});
    const list = h('div');
    const root = h('section', {id: 'jobs', class: 'view'}, h('h1', {}, 'Jobs', summary),
                   h('div', {class: 'card'}, list));
    async function refresh() {
      const data = await api('v1/jobs');
      if (!ctx.live()) return null;
      const jobs = (data.jobs || []).slice().sort((a, b) => (b.created_ms || 0) - (a.created_ms || 0));
      const counts = {};
      for (const j of jobs) counts[j.state] = (counts[j.state] || 0) + 1;
      summary.textContent = jobs.length + ' job' + (jobs.length === 1 ? '' : 's') +
          Object.keys(counts).map((s) => ', ' + counts[s] + ' ' + s).join('');
      root.dataset.count = String(jobs.length);
      if (!jobs.length) {
        list.replaceChildren(h('p', {class: 'muted'},
            'No jobs yet. Submit one with "kvtune submit job.json" or POST /v1/jobs.'));
        return POLL_MS;
      }
      const now = Date.now();
      list.replaceChildren(table(
          [['job'], ['kind'], ['model'], ['state'], ['progress'], ['best so far'], ['created']],
          jobs.map((j) => {
            const best = j.progress && j.progress.best;
            return h('tr', {'data-job': j.id, 'data-state': j.state},
                     h('td', {}, h('a', {href: '#/jobs/' + enc(j.id), class: 'mono'}, j.id),
                       j.name ? h('div', {class: 'muted'}, j.name) : null),
                     h('td', {}, badge(j.kind, 'kind')),
                     h('td', {title: j.model}, String(j.model || '').split('/').pop()),
                     h('td', {}, badge(j.state)),
                     h('td', {}, progressOf(j), j.error ? h('div', {class: 'error-text'}, j.error) : null),
                     h('td', {}, best ? [h('div', {class: 'mono'}, shortLayers(best.layers)),
                                         h('div', {class: 'muted'}, bits(best.avg_bits) + ' bits, KL ' +
                                                                    kl(best.kl))] : ''),
                     h('td', {title: when(j.created_ms)}, ago(now - j.created_ms)));
          })));
      return POLL_MS;
    }
    return {root, refresh};
  }

  // ---- one job -------------------------------------------------------------

  function jobView(ctx, id) {
    const root = h('section', {id: 'job', class: 'view', 'data-job': id, 'data-state': 'loading'});
    const title = h('h1', {}, 'Job ', h('span', {class: 'mono'}, id));
    const about = h('div', {class: 'card'});
    const result = h('div');
    const plots = h('div', {class: 'plots'});
    const tables = h('div');
    root.append(title, about, plots, result, tables);
    let shown = '';       // updated_ms and state of what is on the page
    let exportsOf = '';   // ... and of the exports shown
    let cost = 0;         // ms the last full refresh took: polls slow down for big jobs

    async function refresh() {
      const summary = await api('v1/jobs/' + enc(id) + '?view=summary');
      if (!ctx.live()) return null;
      const key = summary.updated_ms + '/' + summary.state;
      if (key !== shown) {
        const t0 = performance.now();
        const job = await api('v1/jobs/' + enc(id));
        const isSearch = job.kind === 'search';
        const [pareto, sensitivity] = await Promise.all([
          isSearch ? api('v1/jobs/' + enc(id) + '/pareto.svg', true) : null,
          isSearch || job.kind === 'profile' ? api('v1/jobs/' + enc(id) + '/sensitivity.svg', true)
                                             : null]);
        let exports = null;
        if (isSearch && job.state === 'done' && exportsOf !== key) {
          exports = await api('v1/jobs/' + enc(id) + '/exports');
        }
        if (!ctx.live()) return null;
        render(job, pareto, sensitivity, exports);
        shown = job.updated_ms + '/' + job.state;
        if (exports) exportsOf = shown;
        cost = performance.now() - t0;
      }
      return active(summary.state) ? Math.max(POLL_MS, 4 * cost) : null;
    }

    function render(job, pareto, sensitivity, exports) {
      const spec = job.spec || {};
      const search = spec.search || {};
      const s = job.search || {};
      put(title, 'Job ', h('span', {class: 'mono'}, job.id), badge(job.kind, 'kind'),
                            badge(job.state), job.name ? h('span', {class: 'muted'}, job.name) : null);
      about.replaceChildren(h('div', {class: 'grid2'},
          facts([['model', job.model], ['target', spec.target], ['data', spec.data],
                 ['scheme', spec.scheme ? spec.scheme.name + ' (group ' + spec.scheme.group_size +
                                          ', residual ' + spec.scheme.residual + ')' : ''],
                 ['budget', isNum(search.max_bits) ? search.max_bits + ' average bits' : ''],
                 ['strategy', s.strategy],
                 ['layers', job.model_info ? job.model_info.layers : '']]),
          facts([['progress', progressOf(job)],
                 ['evaluations', isNum(s.evaluations) ? s.evaluations + ' (generation ' + s.generation + ')' : ''],
                 ['created', when(job.created_ms)], ['updated', when(job.updated_ms)],
                 ['error', job.error ? h('span', {class: 'error-text'}, job.error) : '']])));

      // The result: the recommended config and its exports, or the best so far.
      const frontier = job.frontier || [];
      if (job.kind === 'search') {
        const best = job.progress && job.progress.best;
        const parts = [];
        if (job.state === 'done' && exports) {
          const rec = frontier.find((f) => f.layers === exports.recommended);
          parts.push(h('h2', {}, 'Recommended config',
                       h('span', {class: 'muted'}, 'the lowest KL within the budget, target ' +
                                                   (spec.target || 'kvtune'))));
          if (rec) {
            parts.push(h('p', {}, h('span', {class: 'mono'}, rec.layers), ' — ',
                         bits(rec.metrics.avg_bits) + ' bits, KL ' + kl(rec.metrics.kl)));
          }
          parts.push(exportTabs(exports.exports || []));
          result.replaceChildren(h('div', {class: 'card', id: 'recommended'}, parts));
        } else if (job.state !== 'done') {
          parts.push(h('h2', {}, active(job.state) ? 'Best so far' : 'Best found',
                       h('span', {class: 'muted'}, 'within the budget, target ' + (spec.target || 'kvtune'))));
          parts.push(best ? h('p', {}, h('span', {class: 'mono'}, best.layers), ' — ',
                              bits(best.avg_bits) + ' bits, KL ' + kl(best.kl))
                          : h('p', {class: 'muted'}, 'nothing measured within the budget yet'));
          if (active(job.state)) parts.push(h('p', {class: 'muted'}, 'Exports appear when the search is done.'));
          result.replaceChildren(h('div', {class: 'card'}, parts));
        }
      } else {
        result.replaceChildren();
      }

      // The plots, as the report draws them.
      const figures = [];
      if (pareto) figures.push(figure('pareto', pareto, 'Measured frontier (filled), the additive ' +
          'model\'s predictions (rings) and the uniform baselines; hover a point for its config.'));
      if (sensitivity) figures.push(figure('sensitivity', sensitivity, 'KL of each candidate pair ' +
          'on each layer alone: the profile the search prunes and clusters with.'));
      plots.replaceChildren(...figures);

      // The tables.
      const blocks = [];
      if (job.kind === 'search') {
        const engine = frontier.some((f) => f.deploy);
        blocks.push(h('div', {class: 'card'},
            h('h2', {}, 'Frontier', h('span', {class: 'muted'}, frontier.length + ' configs, by average bits')),
            frontier.length ? table(
                [['config'], ...metricHeads, ['pred. KL', 'num'], ['val. KL', 'num'],
                 ['free-run', 'num'], engine ? ['deploy'] : null].filter(Boolean),
                frontier.map((f) => h('tr', {'data-layers': f.layers},
                    h('td', {class: 'layers'}, f.layers), metricCells(f.metrics),
                    h('td', {class: 'num'}, kl(f.predicted_kl)),
                    h('td', {class: 'num'}, f.validation ? kl(f.validation.kl) +
                                                           (f.validation.rank_flip ? ' *' : '') : ''),
                    h('td', {class: 'num'}, f.validation && f.validation.free_run
                                                ? ratio(f.validation.free_run.agreement) : ''),
                    engine ? h('td', {}, f.deploy && f.deploy.text
                                             ? h('code', {}, f.deploy.text.split('\n').pop())
                                             : f.deploy && f.deploy.error || '') : null)))
                : h('p', {class: 'muted'}, 'No frontier yet.'),
            frontier.some((f) => f.validation && f.validation.rank_flip)
                ? h('p', {class: 'muted'}, '* rank flip: its KL order against another validated ' +
                                           'config is reversed on the validation data.') : null));
        const baselines = (job.baselines || []).slice().sort(
            (a, b) => (a.metrics || {}).avg_bits - (b.metrics || {}).avg_bits);
        if (baselines.length) {
          blocks.push(h('div', {class: 'card'}, h('h2', {}, 'Uniform baselines'),
              table([['config'], ...metricHeads],
                    baselines.map((b) => h('tr', {}, h('td', {class: 'layers'}, shortLayers(b.layers)),
                                           metricCells(b.metrics))))));
        }
      } else if (job.kind === 'evaluate' || job.kind === 'profile') {
        const results = job.results || [];
        blocks.push(h('div', {class: 'card'}, h('h2', {}, 'Results',
                                                 h('span', {class: 'muted'}, results.length + ' evaluations')),
            table([['config'], ...metricHeads, ['worker'], ['seconds', 'num']],
                  results.map((r) => h('tr', {}, h('td', {class: 'layers'}, r.config), metricCells(r.metrics),
                                       h('td', {}, r.worker), h('td', {class: 'num'},
                                                                isNum(r.seconds) ? r.seconds.toFixed(3) : ''))))));
      }
      const failures = job.failures || [];
      if (failures.length) {
        blocks.push(h('div', {class: 'card'}, h('h2', {}, 'Failed evaluations'),
            table([['config'], ['errors']], failures.map((f) => h('tr', {},
                h('td', {class: 'layers'}, f.config),
                h('td', {class: 'error-text'}, (f.errors || []).join('\n')))))));
      }
      tables.replaceChildren(...blocks);

      // Last: the state the DOM now shows, for scripts and tests.
      root.dataset.state = job.state;
      root.dataset.points = String(frontier.length);
    }

    function figure(name, svgText, caption) {
      let body;
      try {
        body = svgNode(svgText);
      } catch (e) {
        body = h('p', {class: 'empty'}, e.message);
      }
      return h('figure', {class: 'plot card', id: name + '-plot'}, body, h('figcaption', {}, caption));
    }

    return {root, refresh};
  }

  // ---- the registry --------------------------------------------------------

  const PER_LAYER_FORMATS = ['kvtuner', 'trtllm', 'sglang', 'hf_quant_config', 'hf_config_json'];

  function registryView(ctx) {
    const list = h('div');
    const summary = h('span', {class: 'muted'});
    const root = h('section', {id: 'registry', class: 'view'}, h('h1', {}, 'Registry', summary),
                   h('p', {class: 'muted'}, 'Each entry merges the frontiers of every finished search ' +
                     'of one model, scheme, target, data and metric. Pick a config for its exports.'),
                   list);
    let shown = null;
    async function refresh() {
      const data = await api('v1/registry');
      if (!ctx.live()) return null;
      const entries = data.entries || [];
      const key = entries.map((e) => e.id + '@' + e.updated_ms).join(',');
      if (key === shown) return REGISTRY_POLL_MS;
      const full = await Promise.all(entries.map((e) => api('v1/registry/' + enc(e.id))));
      if (!ctx.live()) return null;
      summary.textContent = entries.length + ' entr' + (entries.length === 1 ? 'y' : 'ies');
      root.dataset.count = String(entries.length);
      list.replaceChildren(...(full.length ? full.map((e) => entryCard(ctx, e))
          : [h('p', {class: 'muted card'}, 'No entries yet: a search adds one when it is done.')]));
      shown = key;
      return REGISTRY_POLL_MS;
    }
    return {root, refresh};
  }

  function entryCard(ctx, e) {
    const frontier = e.frontier || [];
    const exportsBox = h('div', {class: 'card-exports'});
    const rows = frontier.map((c, i) => h('tr', {'data-layers': c.layers, onclick: () => select(i)},
        h('td', {}, h('input', {type: 'radio', name: 'pick-' + e.id, 'aria-label': 'export this config'})),
        h('td', {class: 'layers'}, c.layers), metricCells(c.metrics),
        h('td', {class: 'num'}, c.validation ? kl(c.validation.kl) : ''),
        h('td', {}, c.job ? h('a', {href: '#/jobs/' + enc(c.job), class: 'mono'}, c.job) : '')));
    let selected = -1;
    async function select(i) {
      if (i === selected) return;
      selected = i;
      rows.forEach((r, j) => {
        r.classList.toggle('selected', i === j);
        r.querySelector('input').checked = i === j;
      });
      const c = frontier[i];
      exportsBox.replaceChildren(h('p', {class: 'muted'}, 'Loading the exports of ' + shortLayers(c.layers) + '…'));
      // The best config within its own bits is this config (a frontier).
      const best = 'v1/registry/' + enc(e.id) + '/best?max_bits=' + c.avg_bits;
      try {
        const chosen = await api(best);
        const list = [];
        const refused = [];
        if (chosen.deploy && chosen.deploy.text) {
          list.push({format: chosen.deploy.format, text: chosen.deploy.text, deploy: true});
        }
        const texts = await Promise.all(PER_LAYER_FORMATS.map((f) =>
            api(best + '&format=' + f, true).then((text) => ({format: f, text}),
                                                  (err) => ({format: f, error: err.message}))));
        for (const t of texts) (t.error ? refused : list).push(t);
        if (!ctx.live() || selected !== i) return;
        exportsBox.replaceChildren(h('h2', {class: 'sub'}, 'Exports of ', h('span', {class: 'mono'}, shortLayers(c.layers)),
                                     h('span', {class: 'muted'}, bits(c.avg_bits) + ' bits, KL ' + kl(c.kl))),
                                   exportTabs(list, refused));
      } catch (err) {
        if (selected === i) exportsBox.replaceChildren(h('p', {class: 'error-text'}, err.message));
      }
    }
    const card = h('div', {class: 'card entry', id: 'entry-' + e.id, 'data-entry': e.id},
        h('h2', {}, e.model || '?', e.synthetic ? badge('synthetic', 'kind') : null,
          h('span', {class: 'muted'}, 'target ' + (e.target || 'kvtune') + ' · ' + (e.scheme || '') +
                                      ' · entry ' + e.id)),
        facts([['data', e.data], ['metric', e.metric], ['model', e.model_spec],
               ['read', e.read + (e.prompt_tokens ? ', ' + e.prompt_tokens + ' prompt tokens' : '')],
               ['engine', e.target && e.target !== 'kvtune' && e.target !== 'kvtuner'
                              ? (e.released ? 'a released engine runs it' : 'needs ' + (e.needs || '?')) : ''],
               ['updated', when(e.updated_ms)]]),
        h('h2', {class: 'sub'}, 'Frontier', h('span', {class: 'muted'}, ' ' + frontier.length + ' configs')),
        table([[''], ['config'], ...metricHeads, ['val. KL', 'num'], ['job']], rows, {class: 'pick'}),
        exportsBox);
    if (frontier.length) select(frontier.length - 1);  // the lowest KL
    return card;
  }

  // ---- the workers ---------------------------------------------------------

  function workersView(ctx) {
    const list = h('div');
    const summary = h('span', {class: 'muted'});
    const root = h('section', {id: 'workers', class: 'view'}, h('h1', {}, 'Workers', summary),
                   h('div', {class: 'card'}, list));
    async function refresh() {
      const data = await api('v1/workers');
      if (!ctx.live()) return null;
      const workers = data.workers || [];
      const leases = workers.reduce((n, w) => n + (w.leases || 0), 0);
      summary.textContent = workers.length + ' connected, ' + leases + ' evaluation' +
                            (leases === 1 ? '' : 's') + ' leased';
      root.dataset.count = String(workers.length);
      if (!workers.length) {
        list.replaceChildren(h('p', {class: 'muted'},
            'No worker connected. Start one with "kvtune worker --connect tcp://HOST:PORT".'));
        return POLL_MS;
      }
      list.replaceChildren(table(
          [['worker'], ['device'], ['threads', 'num'], ['load'], ['results', 'num'], ['memory', 'num'],
           ['models'], ['connected'], ['last seen', 'num']],
          workers.map((w) => {
            const capacity = (w.leases || 0) + Math.max(0, w.credit || 0);
            return h('tr', {'data-worker': w.id},
                     h('td', {class: 'mono'}, w.id), h('td', {}, w.device || ''),
                     h('td', {class: 'num'}, w.threads),
                     h('td', {}, h('meter', {min: 0, max: Math.max(1, capacity), value: w.leases || 0}),
                       ' ' + (w.leases || 0) + ' leased, credit ' + (w.credit || 0)),
                     h('td', {class: 'num'}, w.results),
                     h('td', {class: 'num', title: 'held by loaded evaluators / the device\'s'},
                       [bytes(w.reference_bytes), bytes(w.memory_bytes)].filter(Boolean).join(' / ')),
                     h('td', {class: 'mono'}, (w.loaded_models || []).map((m) => String(m).split('/').pop()).join(', ')),
                     h('td', {}, when(w.connected_ms)),
                     h('td', {class: 'num'}, ago(w.last_seen_ms_ago)));
          })));
      return POLL_MS;
    }
    return {root, refresh};
  }

  window.addEventListener('hashchange', navigate);
  navigate();
})();
