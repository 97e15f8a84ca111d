// Real apps behind the proxy, with the settings the README's "Apps behind
// the proxy" gives: JupyterLab behind a private signed URL (a kernel runs
// code over its WebSocket), Streamlit on a public sandbox (its WebSocket
// updates the page on a click). Both from PyPI, in the venv scripts/test
// makes (target/e2e-venv, versions pinned in e2e/requirements.txt).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startProxy, launchBrowser, curl, freePort, waitFor, ARTIFACTS } from '../harness.mjs';

const ROOT = new URL('../..', import.meta.url).pathname;
const VENV = process.env.E2E_VENV ?? join(ROOT, 'target/e2e-venv');
assert.ok(existsSync(join(VENV, 'bin/jupyter')), `no venv at ${VENV}: run scripts/test, which makes it`);

const children = [];
/** Starts a venv program; resolves once `ready` answers 200. */
async function startApp(args, readyUrl, cwd) {
  const child = spawn(join(VENV, 'bin', args[0]), args.slice(1), { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  const deadline = Date.now() + 60000;
  while ((await curl(readyUrl).catch(() => [0]))[0] !== 200) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`${args[0]} did not start:\n${log}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return { log: () => log };
}

const labPort = await freePort();
const stPort = await freePort();
const registry = [
  '[[sandboxes]]', 'id = "lab1"', 'upstream = "127.0.0.1"', '',
  '[[sandboxes]]', 'id = "st1"', 'public = true', 'upstream = "127.0.0.1"', '',
].join('\n');
const proxy = await startProxy(registry);
const browser = await launchBrowser();
after(async () => { await browser.close(); proxy.stop(); for (const c of children) c.kill('SIGKILL'); });

test('JupyterLab behind a private signed URL runs print(6*7) through its kernel WebSocket', { timeout: 120000 }, async () => {
  const signed = await proxy.cli('sign-url', '--sandbox', 'lab1', '--port', String(labPort), '--expires-in', '600');
  const origin = new URL(signed).origin;
  const dir = mkdtempSync(join(tmpdir(), 'pp-lab-'));
  writeFileSync(join(dir, 'sum.ipynb'), JSON.stringify({
    nbformat: 4, nbformat_minor: 5, metadata: { kernelspec: { name: 'python3', display_name: 'Python 3', language: 'python' } },
    cells: [{ cell_type: 'code', id: 'c1', metadata: {}, source: [], outputs: [], execution_count: null }],
  }));
  // The README's command, with the preview origin.
  await startApp(['jupyter', 'lab', '--no-browser', '--ip=127.0.0.1', `--port=${labPort}`, `--ServerApp.root_dir=${dir}`,
    '--IdentityProvider.token=', '--ServerApp.password=', `--ServerApp.allow_origin=${origin}`,
    ...(process.getuid?.() === 0 ? ['--allow-root'] : [])],
  `http://127.0.0.1:${labPort}/api`, dir);
  await waitFor(async () => (await curl(`${signed}api`))[0] === 200, 'the registry reload');

  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(signed);                       // the signed URL sets the auth cookie
  await page.goto(`${origin}/lab/tree/sum.ipynb`);
  const editor = page.locator('.jp-Notebook .jp-Cell .cm-content').first();
  await editor.waitFor({ timeout: 60000 });
  // The kernel is connected (over its WebSocket through the proxy) and idle.
  await page.locator('#jp-main-statusbar', { hasText: 'Idle' }).waitFor({ timeout: 60000 });
  await editor.click();
  await page.keyboard.type('print(6*7)');
  await page.locator('.jp-Notebook .jp-Cell .cm-content', { hasText: 'print(6*7)' }).waitFor();
  await page.keyboard.press('Shift+Enter');
  const output = page.locator('.jp-OutputArea-output', { hasText: '42' });
  await output.waitFor({ timeout: 60000 }).catch(async (e) => {
    await page.screenshot({ path: join(ARTIFACTS, 'jupyterlab-failed.png') });
    throw e;
  });
  assert.equal((await output.first().textContent()).trim(), '42');
  await page.screenshot({ path: join(ARTIFACTS, 'jupyterlab.png') });
  await context.close();
});

test('Streamlit on a public sandbox renders and updates on a click', { timeout: 120000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pp-st-'));
  writeFileSync(join(dir, 'app.py'), [
    'import streamlit as st',
    'st.title("hello from streamlit")',
    'if st.button("Count"):',
    '    st.write("clicked once")',
  ].join('\n'));
  const host = `${stPort}-st1.preview.localhost:${proxy.port}`;
  // The README's command, with the preview host.
  await startApp(['streamlit', 'run', 'app.py', '--server.headless=true', '--server.address=127.0.0.1',
    `--server.port=${stPort}`, `--browser.serverAddress=${host.split(':')[0]}`, `--browser.serverPort=${proxy.port}`,
    '--browser.gatherUsageStats=false'],
  `http://127.0.0.1:${stPort}/_stcore/health`, dir);

  const page = await browser.newPage();
  await page.goto(`http://${host}/`);
  await page.locator('h1', { hasText: 'hello from streamlit' }).waitFor({ timeout: 60000 });
  await page.locator('button', { hasText: 'Count' }).click();
  await page.locator('text=clicked once').waitFor({ timeout: 30000 });
  await page.screenshot({ path: join(ARTIFACTS, 'streamlit.png') });
  await page.close();
});

/** A WebSocket handshake through the proxy with the browser's `Origin`:
 * the status the app answers (101 accepted, 403 refused). */
async function wsStatus(url, origin) {
  const [status] = await curl(url, '-o', '/dev/null', '--max-time', '5', '-H', 'Connection: Upgrade', '-H', 'Upgrade: websocket',
    '-H', 'Sec-WebSocket-Version: 13', '-H', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', '-H', `Origin: ${origin}`);
  return status;
}

test('without their one setting, both apps refuse the preview\'s WebSockets (what the README warns of)', { timeout: 120000 }, async () => {
  // Streamlit without --browser.serverAddress: its stream is refused.
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'pp-st-'));
  writeFileSync(join(dir, 'app.py'), 'import streamlit as st\nst.title("no address")\n');
  const st = await startApp(['streamlit', 'run', 'app.py', '--server.headless=true', '--server.address=127.0.0.1',
    `--server.port=${port}`, '--browser.gatherUsageStats=false'], `http://127.0.0.1:${port}/_stcore/health`, dir);
  const stOrigin = `http://${port}-st1.preview.localhost:${proxy.port}`;
  assert.equal(await wsStatus(`${stOrigin}/_stcore/stream`, stOrigin), 403);
  assert.match(st.log(), /Rejecting WebSocket connection with disallowed Origin or Host header/);

  // JupyterLab without --ServerApp.allow_origin: the kernel's socket is refused.
  const labPort2 = await freePort();
  const labDir = mkdtempSync(join(tmpdir(), 'pp-lab-'));
  const lab = await startApp(['jupyter', 'lab', '--no-browser', '--ip=127.0.0.1', `--port=${labPort2}`,
    `--ServerApp.root_dir=${labDir}`, '--IdentityProvider.token=', '--ServerApp.password=',
    ...(process.getuid?.() === 0 ? ['--allow-root'] : [])], `http://127.0.0.1:${labPort2}/api`, labDir);
  const direct = `http://127.0.0.1:${labPort2}`;
  const page = await fetch(`${direct}/lab`);
  const xsrf = page.headers.getSetCookie().map((c) => c.split(';')[0]).find((c) => c.startsWith('_xsrf='));
  const kernel = await (await fetch(`${direct}/api/kernels`, {
    method: 'POST', headers: { cookie: xsrf, 'x-xsrftoken': xsrf.slice('_xsrf='.length) },
  })).json();
  const signed = await proxy.cli('sign-url', '--sandbox', 'lab1', '--port', String(labPort2), '--expires-in', '600');
  const origin = new URL(signed).origin;
  await waitFor(async () => (await curl(`${signed}api`))[0] === 200, 'the registry reload');
  assert.equal(await wsStatus(`${origin}/api/kernels/${kernel.id}/channels`, origin), 403);
  assert.match(lab.log(), /Blocking Cross Origin WebSocket Attempt/);
});
