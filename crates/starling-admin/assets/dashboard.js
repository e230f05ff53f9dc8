// The Starling dashboard. Once a second it reads /api/v1/stats (and the
// store commit histogram of /metrics) for the charts, and the client list and
// the chosen session from /api/v1. Plain JavaScript, no build step, nothing
// fetched from elsewhere. Every value from the broker reaches the page through
// textContent or an attribute, never through innerHTML.
'use strict';

(() => {
  const PERIOD_MS = 1000;
  const HISTORY = 120; // samples per chart: two minutes
  const TOKEN_KEY = 'starling.api-token';
  const LIST_LIMIT = 100;

  const $ = (id) => document.getElementById(id);

  // ---- Talking to the API --------------------------------------------------

  /** Thrown when the API wants a (better) token: polling waits for one. */
  class NeedToken extends Error {}

  let waitingForToken = false;

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set('Authorization', 'Bearer ' + token);
    const response = await fetch(path, { ...options, headers, cache: 'no-store' });
    if (response.status === 401) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      askForToken(token ? 'The broker refused that token.' : 'The admin API needs a token.');
      throw new NeedToken('no valid API token');
    }
    return response;
  }

  async function apiJson(path) {
    const response = await api(path);
    if (!response.ok) throw new Error(await errorText(response));
    return response.json();
  }

  /** The message of an API error answer ({"code", "message"}). */
  async function errorText(response) {
    try {
      const body = await response.json();
      return body.message || `${response.status} ${response.statusText}`;
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  function askForToken(message) {
    waitingForToken = true;
    $('token-form').hidden = false;
    $('token-message').textContent = message;
    setStatus('Waiting for an API token.', true);
  }

  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    $('token-form').hidden = true;
    waitingForToken = false;
    refreshRetained();
  });

  function setStatus(text, bad = false) {
    $('status').textContent = text;
    $('status').classList.toggle('bad', bad);
  }

  function notice(text, bad = false) {
    $('notice').textContent = text;
    $('notice').classList.toggle('bad', bad);
  }

  // ---- Formatting ------------------------------------------------------------

  const numberFormat = new Intl.NumberFormat();
  const num = (n) => (n == null ? '–' : numberFormat.format(n));
  const rate = (v) => (v == null ? '–' : v < 10 ? v.toFixed(1) : numberFormat.format(Math.round(v)));
  const millis = (v) => (v == null ? '–' : v < 1 ? v.toFixed(2) : v < 10 ? v.toFixed(1) : numberFormat.format(Math.round(v)));

  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }

  function expiry(interval) {
    if (interval === 4294967295) return 'never';
    if (interval === 0) return 'with its connection';
    return duration(interval);
  }

  function truncate(text, max) {
    return text.length > max ? text.slice(0, max) + '…' : text;
  }

  /** Sets a node's text only when it changed (keeps selections and focus). */
  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  /** An element with text content. */
  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text != null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  /** A table row of text cells; `numeric` names the right-aligned columns. */
  function textRow(values, numeric = []) {
    const tr = document.createElement('tr');
    values.forEach((v, i) => tr.append(element('td', v, numeric.includes(i) ? 'num' : null)));
    return tr;
  }

  // ---- Charts ------------------------------------------------------------------

  const CHART_HEIGHT = 170;
  const COUNTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6];

  /** A uPlot chart in `#id` of the last two minutes; `series` are {label, color}. */
  function makeChart(id, series, integers = false) {
    const node = $(id);
    const y = { size: 50 };
    if (integers) y.incrs = COUNTS;
    const options = {
      width: node.clientWidth || 400,
      height: CHART_HEIGHT,
      cursor: { drag: { x: false, y: false } },
      legend: { live: false },
      scales: {
        x: { range: (u, min, max) => {
          const end = max ?? Date.now() / 1000;
          return [end - (HISTORY * PERIOD_MS) / 1000, end];
        } },
        y: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.15)] },
      },
      axes: [{}, y],
      series: [
        {},
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 2,
          points: { show: Boolean(s.points), size: 5 },
        })),
      ],
    };
    return new uPlot(options, [[], ...series.map(() => [])], node);
  }

  const charts = {
    connections: makeChart('chart-connections', [{ label: 'connected', color: '#2e7d32' }], true),
    messages: makeChart('chart-messages', [
      { label: 'in', color: '#1565c0' },
      { label: 'out', color: '#ef6c00' },
    ]),
    drops: makeChart('chart-drops', [
      { label: 'dropped', color: '#c62828' },
      { label: 'expired', color: '#8d6e63' },
    ]),
    commit: makeChart('chart-commit', [{ label: 'mean, ms', color: '#6a1b9a', points: true }]),
  };

  window.addEventListener('resize', () => {
    for (const [name, u] of Object.entries(charts)) {
      u.setSize({ width: $('chart-' + name).clientWidth, height: CHART_HEIGHT });
    }
  });

  /** Samples per chart, oldest first; t in seconds since the epoch. */
  const history = { t: [], connections: [], in: [], out: [], dropped: [], expired: [], commit: [] };
  let previous = null; // the counters of the last sample

  /** The sum and count of starling_store_commit_seconds in /metrics, if any. */
  function commitTotals(text) {
    let sum = null;
    let count = null;
    for (const line of text.split('\n')) {
      const [name, value] = line.split(' ');
      if (name === 'starling_store_commit_seconds_sum') sum = Number(value);
      if (name === 'starling_store_commit_seconds_count') count = Number(value);
    }
    return sum == null || count == null ? null : { sum, count };
  }

  function record(stats, commit) {
    const now = {
      t: Date.now() / 1000,
      received: stats.messages_received,
      sent: stats.messages_sent,
      dropped: stats.messages_dropped,
      expired: stats.messages_expired,
      commit,
    };
    const dt = previous ? now.t - previous.t : 0;
    // A counter that went down means the broker restarted: no rate then.
    const perSecond = (key) => (dt > 0 && now[key] >= previous[key] ? (now[key] - previous[key]) / dt : null);
    let commitMs = null;
    if (previous && commit && previous.commit && commit.count > previous.commit.count) {
      commitMs = ((commit.sum - previous.commit.sum) / (commit.count - previous.commit.count)) * 1000;
    }
    const sample = {
      t: now.t,
      connections: stats.connections,
      in: perSecond('received'),
      out: perSecond('sent'),
      dropped: perSecond('dropped'),
      expired: perSecond('expired'),
      commit: commitMs,
    };
    for (const key of Object.keys(history)) {
      history[key].push(sample[key]);
      if (history[key].length > HISTORY) history[key].shift();
    }
    previous = now;

    charts.connections.setData([history.t, history.connections]);
    charts.messages.setData([history.t, history.in, history.out]);
    charts.drops.setData([history.t, history.dropped, history.expired]);
    charts.commit.setData([history.t, history.commit]);
    setText($('now-connections'), num(sample.connections));
    setText($('now-messages'), `in ${rate(sample.in)}/s · out ${rate(sample.out)}/s`);
    setText($('now-drops'), `${rate(sample.dropped)}/s dropped · ${rate(sample.expired)}/s expired`);
    setText($('now-commit'), !commit ? 'no store' : commitMs == null ? 'no commit this second' : `${millis(commitMs)} ms mean`);
  }

  async function refreshStats() {
    const metrics = fetch('metrics', { cache: 'no-store' })
      .then((r) => (r.ok ? r.text() : ''))
      .catch(() => '');
    const stats = await apiJson('api/v1/stats');
    record(stats, commitTotals(await metrics));
    setText($('version'), stats.version);
    setText($('stat-connections'), num(stats.connections));
    setText($('stat-sessions'), num(stats.sessions));
    setText($('stat-subscriptions'), num(stats.subscriptions));
    setText($('stat-retained'), num(stats.retained));
    setText($('stat-queued'), num(stats.queued));
    setText($('stat-in-flight'), num(stats.in_flight));
    setText($('stat-uptime'), duration(stats.uptime_seconds));
  }

  // ---- Clients -----------------------------------------------------------------

  const rows = new Map(); // client id -> { tr, cells, kick }
  let selected = null; // the client id whose session is shown
  let listRequest = 0; // answers to older searches are ignored

  function clientRow(id) {
    const tr = document.createElement('tr');
    tr.dataset.clientId = id;
    const cells = {};
    for (const name of ['id', 'user', 'address', 'protocol', 'since', 'queued', 'inFlight', 'actions']) {
      cells[name] = element('td', null, ['queued', 'inFlight'].includes(name) ? 'num' : null);
      tr.append(cells[name]);
    }
    const pick = element('button', id, 'link');
    pick.type = 'button';
    pick.title = 'Show its session';
    pick.addEventListener('click', () => select(id));
    cells.id.append(pick);
    const kick = element('button', 'Kick', 'kick');
    kick.type = 'button';
    kick.setAttribute('aria-label', `Kick ${id}`);
    kick.addEventListener('click', () => kickClient(id));
    cells.actions.append(kick);
    return { tr, cells, kick };
  }

  function fillRow(row, c) {
    const conn = c.connection;
    setText(row.cells.user, c.username ?? '');
    setText(row.cells.address, conn ? conn.address : 'offline');
    setText(row.cells.protocol, conn ? `${conn.protocol} ${conn.transport ?? ''}`.trim() : '');
    setText(row.cells.since, conn ? duration(Date.now() / 1000 - conn.connected_at) : '');
    setText(row.cells.queued, num(c.queued));
    setText(row.cells.inFlight, num(c.in_flight));
    row.kick.hidden = !c.connected;
    row.tr.classList.toggle('offline', !c.connected);
    row.tr.classList.toggle('selected', c.client_id === selected);
  }

  /** Shows `clients` in order, updating rows in place (a row being clicked stays). */
  function renderClients(page) {
    const tbody = $('clients').tBodies[0];
    const shown = new Set();
    page.data.forEach((c, i) => {
      shown.add(c.client_id);
      let row = rows.get(c.client_id);
      if (!row) {
        row = clientRow(c.client_id);
        rows.set(c.client_id, row);
      }
      fillRow(row, c);
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
    });
    for (const [id, row] of rows) {
      if (!shown.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    const what = $('include-offline').checked ? 'session' : 'connected client';
    const count = page.meta.count;
    setText($('clients-count'), `${num(count)} ${what}${count === 1 ? '' : 's'}` +
      (page.meta.hasnext ? `, the first ${page.data.length} shown` : ''));
  }

  async function refreshClients() {
    const request = ++listRequest;
    const query = new URLSearchParams({ limit: String(LIST_LIMIT) });
    const prefix = $('client-prefix').value;
    if (prefix) query.set('client_id_prefix', prefix);
    const list = $('include-offline').checked ? 'sessions' : 'clients';
    const page = await apiJson(`api/v1/${list}?${query}`);
    if (request === listRequest) renderClients(page);
  }

  async function kickClient(id) {
    if (!confirm(`Disconnect client "${id}"? It may connect again; its session stays as its expiry says.`)) return;
    try {
      const response = await api('api/v1/clients/' + encodeURIComponent(id), { method: 'DELETE' });
      if (response.status === 204) notice(`Disconnected ${id}.`);
      else notice(`Could not disconnect ${id}: ${await errorText(response)}`, true);
      await refreshClients();
    } catch (error) {
      if (!(error instanceof NeedToken)) notice(`Could not disconnect ${id}: ${error.message}`, true);
    }
  }

  const searchChanged = () => refreshClients().catch(() => {});
  $('client-search').addEventListener('submit', (event) => {
    event.preventDefault();
    searchChanged();
  });
  $('client-prefix').addEventListener('input', searchChanged);
  $('include-offline').addEventListener('change', searchChanged);

  // ---- The chosen session --------------------------------------------------------

  function select(id) {
    selected = id;
    for (const [rowId, row] of rows) row.tr.classList.toggle('selected', rowId === id);
    refreshSession().catch(() => {});
  }

  async function refreshSession() {
    if (selected == null) return;
    const id = selected;
    const response = await api('api/v1/clients/' + encodeURIComponent(id));
    if (id !== selected) return;
    if (response.status === 404) {
      showSession(null, `No session for ${id} any more.`);
      return;
    }
    if (!response.ok) throw new Error(await errorText(response));
    showSession(await response.json());
  }

  function showSession(c, message) {
    $('session').hidden = !c;
    $('session-empty').hidden = Boolean(c);
    if (!c) {
      setText($('session-empty'), message);
      return;
    }
    const conn = c.connection;
    const fields = [
      ['Client id', c.client_id],
      ['User', c.username ?? '—'],
      ['State', conn ? `connected from ${conn.address}` : 'offline'],
      ['Listener', conn ? `${conn.listener ?? 'in-process'} (${conn.transport ?? '—'})` : '—'],
      ['Protocol', conn ? `MQTT ${conn.protocol}, keep alive ${conn.keep_alive} s` : '—'],
      ['Connected at', conn ? new Date(conn.connected_at * 1000).toLocaleString() : '—'],
      ['Persistent', c.persistent ? 'yes' : 'no'],
      ['Session expiry', expiry(c.expiry_interval)],
      ['Queued', `${num(c.queued)} messages (${bytes(c.queued_bytes)})`],
      ['In flight', num(c.in_flight)],
      ['Dropped', num(c.dropped)],
    ];
    $('session-fields').replaceChildren(...fields.flatMap(([name, value]) => [element('dt', name), element('dd', value)]));
    const subscriptions = c.subscriptions.length
      ? c.subscriptions.map((s) => textRow([s.filter, s.qos], [1]))
      : [textRow(['none', ''])];
    $('session-subscriptions').tBodies[0].replaceChildren(...subscriptions);
  }

  // ---- Retained messages -----------------------------------------------------------

  async function refreshRetained() {
    const filter = $('retained-filter').value.trim() || '#';
    const query = new URLSearchParams({ filter, limit: String(LIST_LIMIT) });
    try {
      const response = await api('api/v1/retained?' + query);
      if (!response.ok) {
        setText($('retained-count'), await errorText(response));
        $('retained').tBodies[0].replaceChildren();
        return;
      }
      const page = await response.json();
      $('retained').tBodies[0].replaceChildren(...page.data.map((m) => textRow([
        m.topic,
        m.qos,
        bytes(m.size),
        m.payload != null ? truncate(m.payload, 200) : `base64 ${truncate(m.payload_base64, 200)}`,
        m.publisher ?? '—',
      ], [1, 2])));
      const count = page.meta.count;
      setText($('retained-count'), `${num(count)} retained message${count === 1 ? '' : 's'} on ${filter}` +
        (page.meta.hasnext ? `, the first ${page.data.length} shown` : ''));
    } catch (error) {
      if (!(error instanceof NeedToken)) setText($('retained-count'), error.message);
    }
  }

  $('retained-search').addEventListener('submit', (event) => {
    event.preventDefault();
    refreshRetained();
  });

  // ---- Once a second -------------------------------------------------------------

  async function tick() {
    const started = performance.now();
    if (!waitingForToken && !document.hidden) {
      const results = await Promise.allSettled([refreshStats(), refreshClients(), refreshSession()]);
      const failed = results.find((r) => r.status === 'rejected' && !(r.reason instanceof NeedToken));
      if (failed) setStatus(`Cannot read the broker: ${failed.reason.message}`, true);
      else if (!waitingForToken) setStatus(`Live, ${new Date().toLocaleTimeString()}`);
    }
    setTimeout(tick, Math.max(0, PERIOD_MS - (performance.now() - started)));
  }

  // For the browser console (and the dashboard's test): the charts and their samples.
  window.dashboard = { charts, history };

  tick();
  refreshRetained();
})();
