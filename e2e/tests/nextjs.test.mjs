// The Next.js dev server behind a preview URL on a real domain: without
// `allowedDevOrigins` Next blocks its dev resources to the preview origin
// (the page does not react, HMR fails); with it the page hydrates and HMR
// connects through the proxy.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startProxy, launchBrowser, curl, freePort, waitFor } from '../harness.mjs';

// Inside e2e/, so `next` and `react` resolve from e2e/node_modules.
const APPS = new URL('../.apps/', import.meta.url).pathname;
mkdirSync(APPS, { recursive: true });
const nextBin = new URL('../node_modules/next/dist/bin/next', import.meta.url).pathname;
const children = [];
const dirs = [];

/** A Next.js app with `config` as next.config.mjs, in dev mode on a free port. */
async function startNext(config) {
  const project = mkdtempSync(join(APPS, 'next-'));
  dirs.push(project);
  mkdirSync(join(project, 'app'));
  writeFileSync(join(project, 'app/layout.js'), 'export default function L({ children }) { return <html><body>{children}</body></html>; }\n');
  writeFileSync(join(project, 'app/page.js'), [
    "'use client';",
    "import { useState } from 'react';",
    'export default function Page() {',
    '  const [n, setN] = useState(0);',
    '  return <main><h1>next app</h1><button onClick={() => setN(n + 1)}>clicked {n}</button></main>;',
    '}',
  ].join('\n'));
  writeFileSync(join(project, 'next.config.mjs'), config);
  const port = await freePort();
  const child = spawn(process.execPath, [nextBin, 'dev', '-H', '127.0.0.1', '-p', String(port)],
    { cwd: project, env: { ...process.env, NEXT_TELEMETRY_DISABLED: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  await waitFor(async () => (await curl(`http://127.0.0.1:${port}/`).catch(() => [0]))[0] === 200, 'next dev');
  return { port, log: () => log };
}

const DOMAIN = 'preview.example.com';
const proxy = await startProxy('[[sandboxes]]\nid = "nx1"\npublic = true\nupstream = "127.0.0.1"\n');
const browser = await launchBrowser([`--host-resolver-rules=MAP *.${DOMAIN} 127.0.0.1`]);
after(async () => {
  await browser.close();
  proxy.stop();
  // Each dev server is gone before its directory goes: one still writing
  // its `.next` made the removal fail (ENOTEMPTY) once.
  await Promise.all(children.map(stopped));
  for (const d of dirs) rmSync(d, { recursive: true, force: true, maxRetries: 5 });
});

/** Stops `child`: SIGTERM, SIGKILL 5 s later; resolves once it has exited. */
function stopped(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill();
    setTimeout(() => child.kill('SIGKILL'), 5000).unref();
  });
}

/** Opens the app through the proxy, clicks its button, and says what happened. */
async function visit(port) {
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  await page.goto(`http://${port}-nx1.${DOMAIN}:${proxy.port}/`);
  await page.locator('h1', { hasText: 'next app' }).waitFor();
  return { page, logs };
}

test('Next.js dev needs allowedDevOrigins for the preview domain', { timeout: 120000 }, async () => {
  const blocked = await startNext('export default {};\n');
  const { page: p1 } = await visit(blocked.port);
  await waitFor(() => /Blocked cross-origin request to Next\.js dev resource/.test(blocked.log()), 'the block in the log');
  await p1.close();

  // The README's setting.
  const allowed = await startNext(`export default { allowedDevOrigins: ['*.${DOMAIN}'] };\n`);
  const { page, logs } = await visit(allowed.port);
  await waitFor(() => logs.some((l) => l.includes('[HMR] connected')), `HMR through the proxy (${logs})`);
  await page.click('button');
  await page.locator('button', { hasText: 'clicked 1' }).waitFor();
  assert.doesNotMatch(allowed.log(), /Blocked cross-origin/);
  await page.close();
});
