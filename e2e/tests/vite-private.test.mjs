// A real dev server as the sandbox app (Vite, with HMR) behind a private
// sandbox opened by a signed preview URL.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startProxy, launchBrowser, curl, freePort, waitFor, ARTIFACTS } from '../harness.mjs';

const project = mkdtempSync(join(tmpdir(), 'pp-vite-'));
writeFileSync(join(project, 'index.html'),
  '<!doctype html><html><head><title>Vite app</title></head><body><p id="msg">loading</p><script type="module" src="/main.js"></script></body></html>');
const source = (text) =>
  `document.getElementById('msg').textContent = ${JSON.stringify(text)};\nif (import.meta.hot) import.meta.hot.accept();\n`;
writeFileSync(join(project, 'main.js'), source('version one'));

const vitePort = await freePort();
const viteBin = new URL('../node_modules/vite/bin/vite.js', import.meta.url).pathname;
const vite = spawn(process.execPath, [viteBin, '--host', '127.0.0.1', '--port', String(vitePort), '--strictPort'],
  { cwd: project, stdio: ['ignore', 'pipe', 'pipe'] });
let viteLog = '';
vite.stdout.on('data', (d) => { viteLog += d; });
vite.stderr.on('data', (d) => { viteLog += d; });
await waitFor(async () => (await curl(`http://127.0.0.1:${vitePort}/`).catch(() => [0]))[0] === 200, `vite on ${vitePort}: ${viteLog}`);

const registry = [
  '[[sandboxes]]', 'id = "app1"', 'token = "app1-token"', 'upstream = "127.0.0.1"', '',
  '[[sandboxes]]', 'id = "other"', 'token = "other-token"', 'upstream = "127.0.0.1"', '',
].join('\n');
const proxy = await startProxy(registry);
const browser = await launchBrowser();
after(async () => { await browser.close(); proxy.stop(); vite.kill(); });

test('signed URL, HMR over the proxy, revocation ends the cookie, other sandboxes', async () => {
  const url = await proxy.cli('sign-url', '--sandbox', 'app1', '--port', String(vitePort), '--expires-in', '600');
  const host = new URL(url).hostname;
  const token = host.split('.')[0].split('-').slice(1).join('-');
  await waitFor(async () => (await curl(url))[0] === 200, 'the registry reload');

  const context = await browser.newContext();
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  await page.goto(url);
  await page.locator('#msg', { hasText: 'version one' }).waitFor();
  await waitFor(() => logs.some((l) => l.includes('[vite] connected')), `the HMR socket through the proxy (${logs})`);

  const cookie = (await context.cookies()).find((c) => c.name === `daytona-sandbox-auth-${token}`);
  assert.ok(cookie, 'the auth cookie is set');
  assert.equal(cookie.httpOnly, true);

  // Edit a source file: the page updates in place, without a reload.
  await page.evaluate(() => { window.__notReloaded = true; });
  writeFileSync(join(project, 'main.js'), source('version two'));
  await page.locator('#msg', { hasText: 'version two' }).waitFor();
  assert.equal(await page.evaluate(() => window.__notReloaded), true, 'hot update, not a reload');

  await page.screenshot({ path: join(ARTIFACTS, 'vite-private.png') });

  // Revoked means revoked (SPEC 2): a new visitor is refused, and so is this
  // browser, whose cookie the token minted.
  await proxy.cli('revoke-url', token);
  await waitFor(async () => (await curl(url))[0] === 401, 'the revocation');
  const reloaded = await page.reload();
  assert.equal(reloaded.status(), 401);
  await page.getByRole('heading', { name: /needs credentials/ }).waitFor();

  // Another private sandbox is still refused, with a page a person understands.
  const other = await page.goto(`http://${vitePort}-other.preview.localhost:${proxy.port}/`);
  assert.equal(other.status(), 401);
  await page.getByRole('heading', { name: /needs credentials/ }).waitFor();
  await context.close();
});
