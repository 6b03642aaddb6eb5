// Web mail in a real browser: the scenarios of tests/web_browser.rs.
//
// usage: node tests/browser/webmail.mjs SCENARIO JSON
// JSON: {"base": "http://127.0.0.1:PORT", "user", "password", "artefacts": DIR, ...} plus
// what the scenario needs (below). Every check is an assertion here; the exit status is the
// verdict, and the last line of stdout is a JSON object of figures for the Rust test.
// Screenshots go to DIR.

import assert from 'node:assert/strict';
import { axe, log, login, options, withBrowser } from './lib.mjs';

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const scenarios = { read, hostile, security, expire, compose, attachments, bulk, looks };

/// The text of the page's main content and of every frame in it (a sanitised HTML body may
/// be shown in a frame).
async function allText(page) {
  const texts = [];
  for (const frame of page.frames()) {
    texts.push(await frame.evaluate(() => (document.body ? document.body.innerText : '')));
  }
  return texts.join('\n');
}

async function openMessage(page, subject) {
  const link = page.getByRole('link', { name: subject, exact: true });
  await assert.doesNotReject(link.waitFor(), `a link named ${subject} in the list`);
  await Promise.all([page.waitForNavigation(), link.click()]);
}

/// Case I: a message that came over SMTP is listed and reads as it was sent.
/// opts: subject, from (as shown), body (text that must appear exactly).
async function read(s, opts) {
  const context = await s.context();
  const page = await context.newPage();
  assert.equal(await login(page, opts), 303);
  assert.equal(new URL(page.url()).pathname, '/mail');
  await s.shot(page, 'list');
  await openMessage(page, opts.subject);
  await s.shot(page, 'read');
  const main = await page.locator('main').innerText();
  assert.ok(main.includes(opts.subject), `the subject in ${main}`);
  assert.ok(main.includes(opts.from), `the sender ${opts.from} in ${main}`);
  // innerText is what a person sees: markup-like text in a text part shows as typed.
  const text = await allText(page);
  for (const line of opts.body) {
    assert.ok(text.includes(line), `the body line ${JSON.stringify(line)} in ${text}`);
  }
  assert.equal(await page.title().then((t) => t.startsWith(opts.subject)), true, 'the title names the message');
  return {};
}

/// An HTML message with script, an inline handler, a remote image and a javascript: link:
/// nothing runs, nothing is fetched from the remote host. opts: subject, marker (text of the
/// HTML part that must show).
async function hostile(s, opts) {
  const context = await s.context();
  const ran = [];
  // The message's script calls this (it exists in every frame); so would the handler and
  // the link. Called means script from the message ran.
  await context.exposeFunction('pwned', (what) => ran.push(String(what)));
  const page = await context.newPage();
  page.on('dialog', (dialog) => {
    ran.push(`dialog ${dialog.message()}`);
    return dialog.dismiss();
  });
  assert.equal(await login(page, opts), 303);
  // The hook is live (so its silence below means something): called from the page itself.
  await page.evaluate(() => window.pwned('probe'));
  assert.deepEqual(ran.splice(0), ['probe'], 'the probe reached the test');
  await openMessage(page, opts.subject);
  const text = await allText(page);
  assert.ok(text.includes(opts.marker), `the HTML part shows: ${text}`);
  // A click on the link, wherever it is: a javascript: URL would run here. (Dispatched:
  // in a framed body another element may lie over it, and the pointer would miss.)
  for (const frame of page.frames()) {
    const links = frame.getByText('click me', { exact: true });
    if ((await links.count()) > 0) {
      await links.first().dispatchEvent('click');
    }
  }
  // Give a late handler (onerror after a failed load) time to fire.
  await page.waitForTimeout(500);
  await s.shot(page, 'hostile');
  const titles = [];
  for (const frame of page.frames()) {
    titles.push(await frame.evaluate(() => [document.title, typeof window.__ran]));
  }
  assert.deepEqual(ran, [], 'script from the message ran');
  for (const [title, flag] of titles) {
    assert.notEqual(title, 'PWNED', 'the message script set the title');
    assert.equal(flag, 'undefined', 'the message script set window.__ran');
  }
  await s.settle();
  const remote = s.escaped.filter((u) => u.includes('remote.example'));
  assert.deepEqual(remote, [], 'requests to the remote host');
  return { frames: page.frames().length };
}

async function sessionCookie(context) {
  const cookies = await context.cookies();
  const cookie = cookies.find((c) => c.name === 'relay_session');
  assert.ok(cookie, `a session cookie among ${JSON.stringify(cookies)}`);
  return cookie;
}

/// Wrong password, cookie flags, a POST without its CSRF token, logout (the old cookie is
/// dead), throttling. opts: throttle_max (the failures allowed per address), tls (bool).
async function security(s, opts) {
  const context = await s.context(opts.tls ? { ignoreHTTPSErrors: true } : {});
  const page = await context.newPage();

  // Wrong password: the form again, with an error a screen reader announces.
  assert.equal(await login(page, opts, opts.user, `${opts.password}-wrong`), 401);
  const alert = page.getByRole('alert');
  assert.match(await alert.innerText(), /wrong user name or password/i);
  assert.equal(await page.getByLabel('User name').inputValue(), opts.user, 'the name is kept');
  await s.shot(page, 'wrong-password');
  assert.equal((await context.cookies()).some((c) => c.name === 'relay_session'), false);

  // The right one: a session cookie script cannot read, never sent cross-site.
  assert.equal(await login(page, opts), 303);
  assert.equal(new URL(page.url()).pathname, '/mail');
  const cookie = await sessionCookie(context);
  assert.equal(cookie.httpOnly, true, 'HttpOnly');
  assert.equal(cookie.sameSite, 'Strict', 'SameSite=Strict');
  assert.equal(cookie.secure, Boolean(opts.tls), 'Secure exactly when over TLS');
  assert.equal(await page.evaluate(() => document.cookie.includes('relay_session')), false);

  // A POST without the CSRF token (the logout form with its token removed): refused, and
  // the session lives on.
  await page.locator('form[action="/logout"] input[name="csrf"]').evaluate((e) => e.remove());
  const [refused] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/logout')),
    page.locator('form[action="/logout"] button').click(),
  ]);
  assert.equal(refused.status(), 403, 'a POST without its CSRF token');
  await page.waitForLoadState('load');
  await s.shot(page, 'csrf-refused');
  const again = await page.goto(`${opts.base}/mail?folder=INBOX`);
  assert.equal(again.status(), 200, 'still logged in after the refused POST');

  // Logout ends the session on the server: the old cookie, sent again, is dead.
  await Promise.all([page.waitForURL('**/login'), page.getByRole('button', { name: 'Log out' }).click()]);
  assert.equal((await context.cookies()).some((c) => c.name === 'relay_session' && c.value), false);
  const other = await s.context(opts.tls ? { ignoreHTTPSErrors: true } : {});
  await other.addCookies([{ name: cookie.name, value: cookie.value, url: opts.base }]);
  const replay = await other.newPage();
  const replayed = await replay.goto(`${opts.base}/mail?folder=INBOX`);
  assert.equal(new URL(replay.url()).pathname, '/login', 'the old cookie leads to the login form');
  assert.equal(replayed.request().redirectedFrom()?.url().includes('/mail'), true);
  await s.shot(replay, 'old-cookie');

  // Throttling (the login above cleared the earlier failure): the allowance of wrong
  // passwords, then locked out, and the right password does not help while locked.
  const statuses = [];
  for (let i = 0; i < opts.throttle_max + 1; i += 1) {
    statuses.push(await login(page, opts, opts.user, `guess-${i}`));
  }
  const expected = Array(opts.throttle_max).fill(401).concat([429]);
  assert.deepEqual(statuses, expected, 'statuses of repeated wrong passwords');
  assert.match(await page.getByRole('alert').innerText(), /too many/i);
  assert.equal(await login(page, opts), 429, 'the right password while locked out');
  await s.shot(page, 'throttled');
  await s.settle();
  return { checked_responses: s.checked };
}

/// A session left idle past `web.session_idle_timeout` is over: the next page is the login
/// form. opts: idle_ms (longer than the timeout).
async function expire(s, opts) {
  const context = await s.context();
  const page = await context.newPage();
  assert.equal(await login(page, opts), 303);
  assert.equal((await page.reload()).status(), 200, 'used at once, the session lives');
  await page.waitForTimeout(opts.idle_ms);
  await page.reload();
  assert.equal(new URL(page.url()).pathname, '/login', 'after the idle time, the login form');
  await s.shot(page, 'expired');
  await s.settle();
  return {};
}

/// Case II: written in the browser to a local user, sent, in Sent. opts: to, subject, body.
async function compose(s, opts) {
  const context = await s.context();
  const page = await context.newPage();
  assert.equal(await login(page, opts), 303);
  await Promise.all([page.waitForNavigation(), page.getByRole('link', { name: 'Write' }).click()]);
  await page.getByLabel('To', { exact: true }).fill(opts.to);
  await page.getByLabel('Subject', { exact: true }).fill(opts.subject);
  await page.getByLabel('Message', { exact: true }).fill(opts.body);
  await s.shot(page, 'compose');
  const [sent] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/send')),
    page.getByRole('button', { name: 'Send', exact: true }).click(),
  ]);
  await page.waitForLoadState('load');
  assert.equal(sent.status(), 200, await page.locator('main').innerText());
  assert.equal((await page.locator('h1').innerText()).trim(), 'Sent');
  await s.shot(page, 'sent');
  await Promise.all([
    page.waitForNavigation(),
    page.getByRole('navigation', { name: 'Folders' }).getByRole('link', { name: /^Sent/ }).click(),
  ]);
  await assert.doesNotReject(page.getByRole('link', { name: opts.subject, exact: true }).waitFor(), 'the copy in Sent');
  await s.shot(page, 'sent-folder');
  return {};
}

/// Case II with two attachments (`attachment`, a multiple file input). opts: to, subject,
/// body, files (paths). NOT YET RUN by tests/web_browser.rs: the upload is being added to
/// the compose form; the Rust test is #[ignore]d until then.
async function attachments(s, opts) {
  const context = await s.context();
  const page = await context.newPage();
  assert.equal(await login(page, opts), 303);
  await page.goto(`${opts.base}/compose`);
  await page.getByLabel('To', { exact: true }).fill(opts.to);
  await page.getByLabel('Subject', { exact: true }).fill(opts.subject);
  await page.getByLabel('Message', { exact: true }).fill(opts.body);
  await page.locator('input[type="file"][name="attachment"]').setInputFiles(opts.files);
  await s.shot(page, 'compose-attachments');
  const [sent] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/send')),
    page.getByRole('button', { name: 'Send', exact: true }).click(),
  ]);
  await page.waitForLoadState('load');
  assert.equal(sent.status(), 200, await page.locator('main').innerText());
  await page.goto(`${opts.base}/mail?folder=Sent`);
  await openMessage(page, opts.subject);
  const main = await page.locator('main').innerText();
  for (const file of opts.files) {
    const name = file.split('/').pop();
    assert.ok(main.includes(name), `the attachment ${name} listed in the Sent copy: ${main}`);
  }
  await s.shot(page, 'sent-attachments');
  return {};
}

/// Milliseconds from navigation to the load event, and the server's part of it.
async function timed(page, url) {
  const started = performance.now();
  const response = await page.goto(url, { waitUntil: 'load' });
  const wall = performance.now() - started;
  assert.equal(response.status(), 200, url);
  const server = await page.evaluate(() => {
    const [nav] = performance.getEntriesByType('navigation');
    return nav.responseEnd - nav.requestStart;
  });
  return { wall, server };
}

/// A big folder pages quickly. opts: total, page_size, bound_ms.
async function bulk(s, opts) {
  const context = await s.context();
  const page = await context.newPage();
  assert.equal(await login(page, opts), 303);
  const pages = Math.ceil(opts.total / opts.page_size);
  const middle = Math.ceil(pages / 2);
  const readLinks = () => page.locator('main a[href^="/read?"]').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
  const first = await timed(page, `${opts.base}/mail?folder=INBOX`);
  const firstLinks = await readLinks();
  await s.shot(page, 'bulk-first');
  const mid = await timed(page, `${opts.base}/mail?folder=INBOX&page=${middle}`);
  const midLinks = await readLinks();
  await s.shot(page, 'bulk-middle');
  assert.equal(firstLinks.length, opts.page_size, 'a full first page');
  assert.equal(midLinks.length, opts.page_size, 'a full middle page');
  assert.equal(midLinks.filter((l) => firstLinks.includes(l)).length, 0, 'the middle page is another page');
  const figures = { first_ms: Math.round(first.wall), first_server_ms: Math.round(first.server),
    middle_ms: Math.round(mid.wall), middle_server_ms: Math.round(mid.server), middle_page: middle };
  log(`bulk: ${JSON.stringify(figures)}`);
  assert.ok(first.wall < opts.bound_ms, `first page in ${first.wall} ms`);
  assert.ok(mid.wall < opts.bound_ms, `middle page in ${mid.wall} ms`);
  return figures;
}

/// The element with focus is drawn with a visible outline (or a box shadow).
async function focusVisible(page) {
  return page.evaluate(() => {
    const e = document.activeElement;
    const style = getComputedStyle(e);
    const outline = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2;
    return { tag: e.tagName, href: e.getAttribute('href'), visible: outline || style.boxShadow !== 'none' };
  });
}

/// The page is no wider than the window (nothing to scroll sideways at a phone's width).
async function fits(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
}

/// Looks and access: axe-core on each page, keyboard use, visible focus, desktop and phone
/// widths. opts: subject (a message to open). Screenshots of each page at both widths.
async function looks(s, opts) {
  const context = await s.context({ viewport: DESKTOP });
  const page = await context.newPage();
  const found = {};
  const check = async (name) => {
    await page.setViewportSize(DESKTOP);
    found[name] = await axe(page);
    await s.shot(page, `${name}-desktop`);
    if (name === 'list' || name === 'read') await s.docShot(page, name, 480);
    await page.setViewportSize(PHONE);
    assert.ok(await fits(page), `${name} fits a phone's width`);
    await s.shot(page, `${name}-phone`);
    if (name === 'list') await s.docShot(page, `${name}-phone`, 560);
    await page.setViewportSize(DESKTOP);
  };

  await page.goto(`${opts.base}/login`);
  await check('login');
  // By keyboard only: the name field has focus, Tab to the password, Enter to log in.
  assert.equal(await page.evaluate(() => document.activeElement.id), 'user');
  await page.keyboard.type(opts.user);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'password');
  await page.keyboard.type(opts.password);
  await Promise.all([page.waitForURL('**/mail?**'), page.keyboard.press('Enter')]);
  await check('list');

  // Tab to the message's link; the focus shows; Enter opens it.
  let focus = null;
  for (let i = 0; i < 40; i += 1) {
    await page.keyboard.press('Tab');
    focus = await focusVisible(page);
    assert.ok(focus.visible, `focus is visible on ${JSON.stringify(focus)}`);
    if (focus.href && focus.href.startsWith('/read?')) break;
  }
  assert.ok(focus.href.startsWith('/read?'), 'a message link is reachable by Tab');
  await Promise.all([page.waitForURL('**/read?**'), page.keyboard.press('Enter')]);
  assert.ok((await page.locator('main').innerText()).includes(opts.subject));
  await check('read');

  await page.goto(`${opts.base}/compose`);
  await check('compose');
  await page.goto(`${opts.base}/no-such-page`);
  await check('notice');

  const serious = [];
  for (const [name, violations] of Object.entries(found)) {
    for (const v of violations) {
      log(`axe ${name}: ${v.impact} ${v.id} (${v.help})\n    ${v.nodes.join('\n    ')}`);
      if (v.impact === 'serious' || v.impact === 'critical') serious.push(`${name}: ${v.id}`);
    }
  }
  assert.deepEqual(serious, [], 'axe-core violations of impact serious or critical');
  await s.settle();
  return { pages: Object.keys(found).length };
}

const name = process.argv[2];
const scenario = scenarios[name];
if (!scenario) {
  console.error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(', ')}`);
  process.exit(2);
}
const opts = options();
let figures = {};
try {
  await withBrowser(opts, async (s) => {
    figures = await scenario(s, opts);
  });
} catch (error) {
  console.error(`scenario ${name} failed: ${error.stack || error}`);
  process.exit(1);
}
console.log(JSON.stringify(figures));
