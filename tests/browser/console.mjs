#!/usr/bin/env node
// Drives the operator console (/console/) in headless Chromium through chromedriver's W3C WebDriver
// HTTP protocol. Node.js 20, no npm packages (the built-in fetch).
//
//   node tests/browser/console.mjs --url http://127.0.0.1:PORT/console/ --token TOKEN \
//        --letter ID --reason TEXT --out DIR [--chromium PATH] [--chromedriver PATH]
//
// The site must have a dead letter ID whose reason contains TEXT, and accept TOKEN as its
// [console] operator_token. The letter is replayed (it must then apply), so it is gone afterwards.
// One line per step on stdout; exit 0 on success, 1 with a message on any failure.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const ELEMENT = 'element-6066-11e4-a52e-4f735466cecf';
const STEP_TIMEOUT_MS = 20000;

function parseArgs(argv) {
  const o = { chromium: '/usr/bin/chromium', chromedriver: '/usr/bin/chromedriver' };
  const known = ['url', 'token', 'letter', 'reason', 'out', 'chromium', 'chromedriver'];
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m || !known.includes(m[1])) throw new Error(`unknown argument ${argv[i]}`);
    const v = m[2] ?? argv[++i];
    if (v === undefined) throw new Error(`--${m[1]} needs a value`);
    o[m[1]] = v;
  }
  for (const k of ['url', 'token', 'letter', 'reason', 'out']) if (!o[k]) throw new Error(`--${k} is required`);
  return o;
}

const log = (s) => console.log(`console.mjs: ${s}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

function checkExecutable(p, what, pkg) {
  try { fs.accessSync(p, fs.constants.X_OK); } catch (e) {
    throw new Error(`${what} not found or not executable at ${p} (Debian package \`${pkg}\`; tests/run.sh installs it; or pass --${what} PATH)`);
  }
}

// A failure that polling must not wait out (the server refused, the page shows an error).
class Fatal extends Error {}

class Driver {
  constructor(base) { this.base = base; }
  async req(method, p, body) {
    let res;
    try {
      res = await fetch(this.base + p, { method, headers: body ? { 'Content-Type': 'application/json' } : {},
        body: body ? JSON.stringify(body) : undefined, signal: AbortSignal.timeout(60000) });
    } catch (e) { throw new Error(`chromedriver ${method} ${p}: ${e.message}`); }
    const text = await res.text();
    let j; try { j = JSON.parse(text); } catch (e) { throw new Error(`chromedriver ${method} ${p}: HTTP ${res.status}, not JSON: ${text.slice(0, 300)}`); }
    if (!res.ok || (j.value && j.value.error)) {
      const err = new Error(`chromedriver ${method} ${p}: ${j.value && j.value.error}: ${j.value && String(j.value.message).split('\n')[0]}`);
      err.wd = j.value && j.value.error;
      throw err;
    }
    return j.value;
  }
}

class Session {
  constructor(driver, id) { this.d = driver; this.id = id; }
  static async create(driver, chromium, langArg, accept, profile) {
    const caps = { capabilities: { alwaysMatch: { browserName: 'chrome', 'goog:chromeOptions': {
      binary: chromium,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1280,900',
        `--lang=${langArg}`, `--user-data-dir=${profile}`, '--no-first-run', '--no-default-browser-check'],
      prefs: { 'intl.accept_languages': accept },
    } } } };
    const v = await driver.req('POST', '/session', caps);
    const s = new Session(driver, v.sessionId);
    await s.cmd('POST', '/window/rect', { width: 1280, height: 900 }).catch(() => {});
    return s;
  }
  cmd(method, p, body) { return this.d.req(method, `/session/${this.id}${p}`, body); }
  async close() { await this.cmd('DELETE', ''); }
  open(url) { return this.cmd('POST', '/url', { url }); }
  exec(script, ...args) { return this.cmd('POST', '/execute/sync', { script, args }); }
  async find(css) {
    try { return (await this.cmd('POST', '/element', { using: 'css selector', value: css }))[ELEMENT]; } catch (e) {
      if (e.wd === 'no such element') return null;
      throw e;
    }
  }
  async text(css) { const e = await this.find(css); return e ? this.cmd('GET', `/element/${e}/text`) : null; }
  async click(css) {
    const e = await this.find(css);
    if (!e) throw new Error(`nothing to click: ${css}`);
    await this.cmd('POST', `/element/${e}/click`, {});
  }
  async type(css, text) {
    const e = await this.find(css);
    if (!e) throw new Error(`no field ${css}`);
    await this.cmd('POST', `/element/${e}/clear`, {});
    await this.cmd('POST', `/element/${e}/value`, { text });
  }
  async screenshot(file) {
    const b64 = await this.cmd('GET', '/screenshot');
    fs.writeFileSync(file, Buffer.from(b64, 'base64'));
  }
  // What is on the page, for failure messages.
  async page() {
    try {
      const v = await this.exec(`return {url: location.href, lang: document.documentElement.lang,
        text: document.body ? document.body.innerText : '(no body)'}`);
      return `page ${v.url} (lang ${v.lang}) shows:\n${String(v.text).replace(/\n{2,}/g, '\n').slice(0, 1500)}`;
    } catch (e) { return `(the page could not be read: ${e.message})`; }
  }
  // Polls fn until it returns a truthy value; fails with the step, what was awaited and the page.
  async until(step, what, fn, timeout = STEP_TIMEOUT_MS) {
    const end = Date.now() + timeout;
    let last = null;
    for (;;) {
      try { const v = await fn(); if (v) return v; last = null; } catch (e) {
        if (e instanceof Fatal) throw new Error(`step "${step}": ${e.message}\n${await this.page()}`);
        last = e;
      }
      if (Date.now() > end) {
        throw new Error(`step "${step}": timed out after ${timeout / 1000} s waiting for ${what}${last ? ` (last error: ${last.message})` : ''}\n${await this.page()}`);
      }
      await sleep(200);
    }
  }
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  checkExecutable(o.chromium, 'chromium', 'chromium');
  checkExecutable(o.chromedriver, 'chromedriver', 'chromium-driver');
  fs.mkdirSync(o.out, { recursive: true });
  const q = (test, extra = '') => `[data-test="${test}"]${extra}`;
  const row = q('letter-row', `[data-id="${o.letter}"]`);
  const cleanup = [];
  let driverProc = null;
  const sessions = [];
  const stopAll = async () => {
    for (const s of sessions.splice(0)) await s.close().catch(() => {});
    if (driverProc && driverProc.exitCode === null && driverProc.signalCode === null) {
      // chromedriver and the browsers it started form one process group (detached).
      const exited = new Promise((r) => driverProc.once('exit', r));
      try { process.kill(-driverProc.pid, 'SIGTERM'); } catch (e) { /* gone */ }
      await Promise.race([exited, sleep(3000)]);
      try { process.kill(-driverProc.pid, 'SIGKILL'); } catch (e) { /* gone */ }
    }
    for (const d of cleanup) fs.rmSync(d, { recursive: true, force: true });
  };
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { stopAll().finally(() => process.exit(1)); });

  try {
    let res;
    try { res = await fetch(o.url, { signal: AbortSignal.timeout(10000) }); } catch (e) {
      throw new Error(`step "reach the console": ${o.url} cannot be reached: ${e.cause ? e.cause.message : e.message}`);
    }
    if (res.status !== 200) throw new Error(`step "reach the console": GET ${o.url} answered HTTP ${res.status}`);
    const csp = res.headers.get('content-security-policy');
    log(`${o.url} answers 200${csp ? ` with Content-Security-Policy "${csp}"` : ' (no Content-Security-Policy)'}`);

    const port = await freePort();
    const driverLog = path.join(o.out, 'chromedriver.log');
    driverProc = spawn(o.chromedriver, [`--port=${port}`, '--allowed-ips=127.0.0.1', `--log-path=${driverLog}`],
      { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let driverErr = '';
    driverProc.stderr.on('data', (c) => { driverErr += c; });
    driverProc.on('error', (e) => { driverErr += e.message; });
    const driver = new Driver(`http://127.0.0.1:${port}`);
    const deadline = Date.now() + 15000;
    for (;;) {
      if (driverProc.exitCode !== null) throw new Error(`chromedriver exited (${driverProc.exitCode}): ${driverErr}`);
      try { const st = await driver.req('GET', '/status'); if (st.ready) break; } catch (e) { /* not yet */ }
      if (Date.now() > deadline) throw new Error(`chromedriver did not answer on port ${port} within 15 s: ${driverErr}`);
      await sleep(100);
    }
    log(`chromedriver ready on port ${port}`);

    const profile = () => { const d = fs.mkdtempSync(path.join(os.tmpdir(), 'sitesync-chromium-')); cleanup.push(d); return d; };
    const en = await Session.create(driver, o.chromium, 'en-US', 'en-US', profile());
    sessions.push(en);
    log('browser session (en-US) started');

    let step = 'open the overview';
    await en.open(o.url);
    await en.until(step, 'the ready state and the dead-letter count', async () =>
      (await en.text(q('overview-ready'))) && (await en.find(q('dead-letter-count'))) && (await en.find(q('site-name'))));
    const lang0 = await en.exec('return document.documentElement.lang');
    if (lang0 !== 'en') throw new Error(`step "${step}": <html lang> is ${lang0}, expected en for an en-US browser\n${await en.page()}`);
    await en.until(step, 'the applied-rate chart', async () => en.find(`${q('chart-rate')} svg, ${q('chart-rate')} p`));
    await en.until(step, 'the export stream running', async () => /export stream[\s\S]*running/i.test((await en.text(q('export-card'))) || ''));
    await en.screenshot(path.join(o.out, 'overview.png'));
    log(`overview shows: ready "${await en.text(q('overview-ready'))}", ${await en.text(q('dead-letter-count'))} dead letter(s); saved overview.png`);
    const scroll = await en.exec('return document.documentElement.scrollWidth - document.documentElement.clientWidth');
    if (scroll > 0) throw new Error(`step "${step}": the overview scrolls horizontally by ${scroll} px at 1280 px`);

    step = 'open the dead-letter list';
    await en.click(q('nav-dead-letters'));
    await en.until(step, `the row of dead letter ${o.letter}`, () => en.find(row));
    const reason = await en.text(`${row} ${q('letter-reason')}`);
    if (!reason || !reason.includes(o.reason)) {
      throw new Error(`step "${step}": the reason of dead letter ${o.letter} is "${reason}", expected it to contain "${o.reason}"\n${await en.page()}`);
    }
    log(`dead letter ${o.letter} is listed with reason "${reason}"`);

    step = 'open the dead letter';
    await en.click(`${row} ${q('letter-link')}`);
    await en.until(step, `the detail of dead letter ${o.letter} with its Replay button`, async () =>
      (await en.find(`${q('letter-detail')}[data-id="${o.letter}"]`)) && en.find(q('replay')));
    const detailReason = await en.text(q('detail-reason'));
    if (!detailReason || !detailReason.includes(o.reason)) throw new Error(`step "${step}": the detail shows reason "${detailReason}"\n${await en.page()}`);
    const disabledBefore = await en.exec(`return document.querySelector('[data-test="replay"]').disabled`);
    const hint = await en.text(q('action-hint'));
    if (!disabledBefore || !hint) throw new Error(`step "${step}": before signing in, Replay should be disabled with a hint (disabled: ${disabledBefore}, hint: ${hint})\n${await en.page()}`);
    await en.screenshot(path.join(o.out, 'dead-letter.png'));
    log(`detail of dead letter ${o.letter} shown (Replay disabled: "${hint}"); saved dead-letter.png`);

    step = 'sign in';
    await en.click(q('signin-open'));
    await en.until(step, 'the sign-in form', () => en.find(q('signin-token')));
    await en.type(q('signin-operator'), 'browser-test');
    await en.type(q('signin-token'), o.token);
    await en.click(q('signin-submit'));
    await en.until(step, '"signed in as browser-test" in the top bar', async () => {
      const err = await en.text(q('signin-error'));
      if (err) throw new Fatal(`signing in failed, the server answered: ${err}`);
      const who = await en.text(q('signed-in-as'));
      return who && who.includes('browser-test');
    });
    const left = await en.exec(`return [...document.querySelectorAll('input')].some((i) => i.value === arguments[0])
      || (arguments[0].length >= 8 && document.documentElement.outerHTML.includes(arguments[0]))`, o.token);
    if (left) throw new Error(`step "${step}": the token is still in the page after signing in`);
    const stored = await en.exec(`const s = []; for (let i = 0; i < localStorage.length; i++) s.push(localStorage.getItem(localStorage.key(i)));
      for (let i = 0; i < sessionStorage.length; i++) s.push(sessionStorage.getItem(sessionStorage.key(i))); return s.some((v) => String(v).includes(arguments[0]))`, o.token);
    if (stored) throw new Error(`step "${step}": the token is in the browser's storage`);
    log(`signed in: the top bar says "${await en.text(q('signed-in-as'))}"; the token is neither in the page nor in storage`);

    step = 'replay the dead letter';
    await en.until(step, 'an enabled Replay button', () => en.exec(`const b = document.querySelector('[data-test="replay"]'); return !!b && !b.disabled`));
    await en.click(q('replay'));
    const msg = await en.until(step, 'a success message', async () => {
      const kind = await en.exec(`const e = document.querySelector('[data-test="status-message"]'); return e && e.dataset.kind`);
      if (kind === 'err') throw new Fatal(`Replay failed, the server answered: ${await en.text(q('status-message'))}`);
      return kind === 'ok' && en.text(q('status-message'));
    }, 60000);
    await en.until(step, `the dead-letter list without letter ${o.letter}`, async () =>
      (await en.exec('return location.hash')) === '#/dead-letters' && (await en.find(q('letters'))) && !(await en.find(row))
      && (await en.exec(`const e = document.querySelector('[data-test="status-message"]'); return !!e && e.dataset.kind === 'ok'`)));
    log(`replayed: "${msg.replace(/\s*×$/, '')}"; the list no longer has dead letter ${o.letter}, the message stays`);

    step = 'switch to Chinese';
    await en.click(q('lang-switch'));
    await en.until(step, 'the navigation in Chinese (死信)', async () =>
      (await en.text(q('nav-dead-letters')) || '').includes('死信') && (await en.exec('return document.documentElement.lang')) === 'zh-CN');
    await en.click(q('nav-overview'));
    await en.until(step, 'the overview in Chinese (概览)', async () =>
      (await en.text(q('page-title'))) === '概览' && en.find(q('overview-ready')));
    await en.until(step, 'the chart', async () => en.find(`${q('chart-rate')} svg, ${q('chart-rate')} p`));
    await en.screenshot(path.join(o.out, 'overview-zh.png'));
    log(`console switched to Chinese ("${await en.text(q('nav-dead-letters'))}", "${await en.text(q('overview-ready'))}"); saved overview-zh.png`);
    await en.close();
    sessions.splice(sessions.indexOf(en), 1);

    step = 'start in Chinese';
    const zh = await Session.create(driver, o.chromium, 'zh-CN', 'zh-CN,zh', profile());
    sessions.push(zh);
    const langs = await zh.exec('return navigator.languages');
    await zh.open(o.url);
    await zh.until(step, 'the console in Chinese without a stored choice (死信 in the navigation, <html lang="zh-CN">)', async () =>
      (await zh.text(q('nav-dead-letters')) || '').includes('死信') && (await zh.exec('return document.documentElement.lang')) === 'zh-CN'
      && (await zh.text(q('page-title'))) === '概览');
    log(`a zh-CN browser (navigator.languages ${JSON.stringify(langs)}) starts in Chinese: "${await zh.text(q('page-title'))}"`);
    await zh.close();
    sessions.splice(sessions.indexOf(zh), 1);
    log('all steps passed');
  } finally {
    await stopAll();
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(`console.mjs: FAILED: ${e.message}`);
  process.exit(1);
});
