// Drives the dashboard in Debian's headless chromium with playwright-core, for
// tests/dashboard.rs (and, by hand, for the screenshot in docs/).
//
//   node drive-dashboard.js '<config as JSON>'
//
// Config: playwright (the playwright-core directory), url, profile (a fresh
// user data dir), timeoutMs (the whole run), stepMs (each wait, default
// 20000), and what to do:
//   token           give this API token in the token field (after a wrong one)
//   minPoints       wait until every chart has this many samples (default 2)
//   traffic         wait until the charts show messages in and out
//   expectClient    wait until this client id is listed
//   search          type this into the client search box; hidden: the id
//                   that must then leave the list
//   view            open this client's session; subscription: a filter it shows
//   retained        {topic, payload}: publish it retained through the API, then
//                   find it in the retained browser (and a store commit latency)
//   screenshot      save the page here (after the steps above)
//   kick            press this client's Kick button, accept the confirmation,
//                   and wait until it leaves the list and its session is offline
//   watchStdin      end (closing the browser) when stdin closes
// Prints one line of JSON: {ok, error, consoleErrors, pageErrors, dialogs, steps}.
'use strict';

const path = require('path');

const config = JSON.parse(process.argv[2]);
const { chromium } = require(path.resolve(config.playwright));

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const STEP_MS = config.stepMs || 20000; // each wait

const result = { ok: false, error: null, consoleErrors: [], pageErrors: [], dialogs: [], steps: [] };
let context = null;
let finished = false;

async function finish(error) {
  if (finished) return;
  finished = true;
  if (error) result.error = String(error && error.stack ? error.stack : error);
  else result.ok = true;
  try {
    // A browser that does not close in time is killed when this process exits.
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('timed out')), 5000).unref());
    if (context) await Promise.race([context.close(), timeout]);
  } catch (e) {
    result.error = result.error || `closing the browser: ${e}`;
    result.ok = false;
  }
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(result.ok ? 0 : 1));
}

setTimeout(() => finish(`timed out after ${config.timeoutMs} ms`), config.timeoutMs).unref();
if (config.watchStdin) {
  process.stdin.on('end', () => finish('stdin closed'));
  process.stdin.resume();
}

const started = Date.now();
function step(name) {
  result.steps.push({ name, ms: Date.now() - started });
}

/** Waits (bounded) until `fn(arg)` is true in the page. */
function until(page, fn, arg) {
  return page.waitForFunction(fn, arg, { timeout: STEP_MS, polling: 100 });
}

const listed = (id) => [...document.querySelectorAll('#clients tbody tr')].some((tr) => tr.dataset.clientId === id);

async function main() {
  context = await chromium.launchPersistentContext(config.profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ARGS,
    viewport: { width: 1360, height: 1000 },
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => {
    if (m.type() === 'error') result.consoleErrors.push(`${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => result.pageErrors.push(String(e)));
  page.on('dialog', (d) => {
    result.dialogs.push(d.message());
    d.accept();
  });

  await page.goto(config.url, { timeout: STEP_MS });
  step('loaded');

  if (config.token) {
    await page.locator('#token-form').waitFor({ state: 'visible', timeout: STEP_MS });
    await page.fill('#token', 'not-the-token');
    await page.click('#token-form button');
    await until(page, () => /refused/.test(document.getElementById('token-message').textContent));
    await page.fill('#token', config.token);
    await page.click('#token-form button');
    await until(page, () => document.getElementById('token-form').hidden && window.dashboard.history.t.length >= 1);
    const stored = await page.evaluate(() => sessionStorage.getItem('starling.api-token'));
    if (stored !== config.token) throw new Error('the token is not kept in sessionStorage');
    await page.reload({ timeout: STEP_MS });
    await until(page, () => window.dashboard && window.dashboard.history.t.length >= 2);
    if (await page.isVisible('#token-form')) throw new Error('asked for the token again after a reload');
    step('token');
  }

  const minPoints = config.minPoints || 2;
  await until(page, (n) => window.dashboard &&
    Object.values(window.dashboard.charts).every((u) => u.data[0].length >= n), minPoints);
  step('charts');

  if (config.traffic) {
    await until(page, () => {
      const h = window.dashboard.history;
      return h.in.some((v) => v > 0) && h.out.some((v) => v > 0);
    });
    step('traffic');
  }

  if (config.expectClient) {
    await until(page, listed, config.expectClient);
    const shown = await page.getByRole('button', { name: config.expectClient, exact: true }).textContent();
    if (shown !== config.expectClient) throw new Error(`the list shows ${JSON.stringify(shown)}`);
    step('listed');
  }

  if (config.search) {
    await page.fill('#client-prefix', config.search);
    await until(page, (id) => ![...document.querySelectorAll('#clients tbody tr')].some((tr) => tr.dataset.clientId === id), config.hidden);
    if (config.expectClient) await until(page, listed, config.expectClient);
    step('search');
  }

  if (config.view) {
    await page.getByRole('button', { name: config.view, exact: true }).click({ timeout: STEP_MS });
    await until(page, (want) => {
      const s = document.getElementById('session');
      return !s.hidden && s.textContent.includes('connected from') && s.textContent.includes(want);
    }, config.subscription);
    step('session');
  }

  if (config.retained) {
    const r = config.retained;
    const answer = await page.evaluate(async (m) => {
      const response = await fetch('api/v1/publish', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ topic: m.topic, payload: m.payload, retain: true, qos: 1 }),
      });
      return response.status;
    }, r);
    if (answer !== 200) throw new Error(`publishing through the API answered ${answer}`);
    await page.fill('#retained-filter', r.filter);
    await page.press('#retained-filter', 'Enter');
    await until(page, (m) => [...document.querySelectorAll('#retained tbody tr')].some((tr) =>
      tr.cells[0].textContent === m.topic && tr.cells[3].textContent === m.payload), r);
    await until(page, () => window.dashboard.history.commit.some((v) => v != null && v > 0));
    step('retained');
  }

  // Nothing from the broker may have become markup.
  const injected = await page.evaluate(() => document.querySelectorAll('tbody b, tbody i, dd b, dd i').length);
  if (injected) throw new Error('a value from the broker was rendered as HTML');

  if (config.screenshot) {
    await page.screenshot({ path: config.screenshot, fullPage: true });
    step('screenshot');
  }

  if (config.kick) {
    await page.getByRole('button', { name: `Kick ${config.kick}`, exact: true }).click({ timeout: STEP_MS });
    await until(page, (id) => ![...document.querySelectorAll('#clients tbody tr')].some((tr) => tr.dataset.clientId === id), config.kick);
    await until(page, () => /^Disconnected /.test(document.getElementById('notice').textContent));
    if (config.view === config.kick) {
      await until(page, () => /State\s*offline/.test(document.getElementById('session-fields').textContent));
    }
    step('kicked');
  }
}

main().then(() => finish(null), (e) => finish(e));
