// The browser side of tests/web_browser.rs: Debian's chromium driven by npm playwright-core
// (both installed by tests/run.sh and tests/tools.sh, never by the browser's own download).
// Every page a scenario opens is watched: a request to anything but the relay's loopback
// address is recorded and aborted, and every response from the relay must carry the
// security headers.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';

export const TOOLS = process.env.RELAY_TEST_TOOLS || '/var/tmp/relay-test-tools';
const require = createRequire(path.join(TOOLS, 'node_modules', 'loader.js'));

function load(name) {
  try {
    return require(name);
  } catch (error) {
    throw new Error(`npm ${name} not found under ${TOOLS}/node_modules: run tests/tools.sh (${error.message})`);
  }
}

const { chromium } = load('playwright-core');
export const AXE_SOURCE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

// The machine's network is closed: nothing but loopback may be reached, and Chromium's own
// background traffic is turned off. A request that escapes Playwright's interception still
// goes nowhere: every name but 127.0.0.1 fails to resolve and any proxied request meets a
// dead port (Chromium never proxies loopback).
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--proxy-server=http://127.0.0.1:9',
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
];

/// The options a scenario gets from the Rust test: one JSON argument.
export function options() {
  const raw = process.argv[3];
  assert.ok(raw, 'usage: webmail.mjs SCENARIO JSON');
  const opts = JSON.parse(raw);
  opts.origin = new URL(opts.base).origin;
  fs.mkdirSync(opts.artefacts, { recursive: true });
  return opts;
}

/// Runs `body(session)` with a browser; closes it whatever happens.
export async function withBrowser(opts, body) {
  // launch() gives each run a fresh, empty profile directory of its own.
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 60_000,
  });
  const session = new Session(browser, opts);
  try {
    await body(session);
    session.assertClean();
  } finally {
    await browser.close();
  }
}

export class Session {
  constructor(browser, opts) {
    this.browser = browser;
    this.opts = opts;
    /// URLs of requests that tried to leave loopback.
    this.escaped = [];
    /// Responses from the relay without the security headers.
    this.badHeaders = [];
    /// Responses from the relay checked.
    this.checked = 0;
    this.pending = [];
  }

  /// A new browser context (its own cookies) with the interception and header checks.
  async context(extra = {}) {
    const context = await this.browser.newContext({
      viewport: { width: 1280, height: 800 },
      ...extra,
    });
    context.setDefaultTimeout(15_000);
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (new URL(url).origin === this.opts.origin) {
        return route.continue();
      }
      this.escaped.push(url);
      return route.abort('blockedbyclient');
    });
    context.on('response', (response) => {
      if (new URL(response.url()).origin === this.opts.origin) {
        this.pending.push(this.checkHeaders(response));
      }
    });
    return context;
  }

  async checkHeaders(response) {
    const h = await response.allHeaders();
    this.checked += 1;
    const csp = h['content-security-policy'] || '';
    const problems = [];
    if (!csp.startsWith("default-src 'none'")) problems.push(`CSP ${csp}`);
    // Only a message body shown in a frame of our own page may be framed, and only by us;
    // such a response is sandboxed by its own policy.
    const framedBody = /(^|;)\s*sandbox\b/.test(csp) && csp.includes("frame-ancestors 'self'");
    if (!csp.includes("frame-ancestors 'none'") && !framedBody) problems.push('no frame-ancestors');
    if (csp.includes('unsafe-inline') || csp.includes('unsafe-eval')) problems.push(`unsafe CSP ${csp}`);
    if (h['x-content-type-options'] !== 'nosniff') problems.push('no nosniff');
    if (h['referrer-policy'] !== 'no-referrer') problems.push('no Referrer-Policy');
    if (this.opts.base.startsWith('https:') && !(h['strict-transport-security'] || '').startsWith('max-age=')) {
      problems.push('no HSTS over TLS');
    }
    if (problems.length > 0) {
      this.badHeaders.push(`${response.status()} ${response.url()}: ${problems.join(', ')}`);
    }
  }

  /// Every response seen so far had the headers; nothing tried to leave loopback.
  async settle() {
    await Promise.all(this.pending);
  }

  assertClean() {
    assert.deepEqual(this.escaped, [], 'requests that tried to leave loopback');
    assert.deepEqual(this.badHeaders, [], 'responses without the security headers');
  }

  /// Saves a full-page screenshot as NAME.png in the artefacts directory.
  async shot(page, name) {
    const file = path.join(this.opts.artefacts, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    log(`screenshot ${file}`);
  }

  /// The top `height` pixels of the window as docs-NAME.png: the README's pictures
  /// (docs/screenshots/ holds copies), without the empty page below the content.
  async docShot(page, name, height) {
    const file = path.join(this.opts.artefacts, `docs-${name}.png`);
    const { width } = page.viewportSize();
    await page.screenshot({ path: file, clip: { x: 0, y: 0, width, height } });
    log(`screenshot ${file}`);
  }
}

/// Logs in through the form with the keyboard's submit (Enter); the response's status.
export async function login(page, opts, user = opts.user, password = opts.password) {
  await page.goto(`${opts.base}/login`);
  await page.getByLabel('User name').fill(user);
  await page.getByLabel('Password').fill(password);
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/login') && r.request().method() === 'POST'),
    page.getByLabel('Password').press('Enter'),
  ]);
  await page.waitForLoadState('load');
  return response.status();
}

/// Runs axe-core in the page; the violations of impact serious or critical.
export async function axe(page) {
  // Evaluated through the DevTools protocol, which the page's CSP does not govern (a
  // <script> tag would be refused, as it should be).
  await page.evaluate(AXE_SOURCE);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => `${n.target.join(' ')}: ${n.failureSummary}`),
    }));
  });
  return result;
}

export function log(...args) {
  console.log(...args);
}
