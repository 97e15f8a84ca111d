// The Vite dev server when the app sees the preview host
// (UPSTREAM_HOST_HEADER=preview): without `server.allowedHosts` Vite refuses
// the request; with it the page and its HMR socket work through the proxy.
// (With the default upstream Host, Vite needs nothing: vite-private.test.mjs.)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startProxy, launchBrowser, curl, freePort, waitFor } from '../harness.mjs';

const viteBin = new URL('../node_modules/vite/bin/vite.js', import.meta.url).pathname;
const children = [];

/** A Vite project with `config` as vite.config.js, served on a free port. */
async function startVite(config) {
  const project = mkdtempSync(join(tmpdir(), 'pp-vite-'));
  writeFileSync(join(project, 'index.html'), '<!doctype html><title>vite</title><p id="msg">vite page</p><script type="module" src="/main.js"></script>');
  writeFileSync(join(project, 'main.js'), 'if (import.meta.hot) import.meta.hot.accept();\n');
  writeFileSync(join(project, 'vite.config.js'), config);
  const port = await freePort();
  const child = spawn(process.execPath, [viteBin, '--host', '127.0.0.1', '--port', String(port), '--strictPort'], { cwd: project, stdio: 'ignore' });
  children.push(child);
  await waitFor(async () => (await curl(`http://127.0.0.1:${port}/`).catch(() => [0]))[0] !== 0, 'vite');
  return port;
}

const registry = '[[sandboxes]]\nid = "web1"\npublic = true\nupstream = "127.0.0.1"\n';
const proxy = await startProxy(registry, { UPSTREAM_HOST_HEADER: 'preview' });
// A domain that is not localhost (Vite trusts *.localhost by default),
// resolved to this machine.
const DOMAIN = 'preview.example.com';
const browser = await launchBrowser([`--host-resolver-rules=MAP *.${DOMAIN} 127.0.0.1`]);
after(async () => { await browser.close(); proxy.stop(); for (const c of children) c.kill(); });

test('Vite needs server.allowedHosts when it sees the preview host', async () => {
  const bare = await startVite('export default {};\n');
  const [status, body] = await curl(`http://${bare}-web1.${DOMAIN}:${proxy.port}/`);
  assert.equal(status, 403);
  assert.match(body, /Blocked request\. This host .* is not allowed/);

  // The README's setting.
  const allowed = await startVite("export default { server: { allowedHosts: ['.preview.example.com'] } };\n");
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  await page.goto(`http://${allowed}-web1.${DOMAIN}:${proxy.port}/`);
  await page.locator('#msg', { hasText: 'vite page' }).waitFor();
  await waitFor(() => logs.some((l) => l.includes('[vite] connected')), `HMR through the proxy (${logs})`);
  await page.close();
});
