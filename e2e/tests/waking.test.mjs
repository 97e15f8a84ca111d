// Waking a stopped sandbox (SPEC 5) in a real browser: the waiting page at
// once, then the app with no action by the person; curl is held instead.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startProxy, launchBrowser, curl, ARTIFACTS } from '../harness.mjs';
import { join } from 'node:path';

// Sandboxes: stopped until started, then up two seconds later.
const sandboxes = { nap1: { state: 'stopped', starts: 0 }, nap2: { state: 'stopped', starts: 0 } };
const runner = http.createServer((req, res) => {
  const id = req.url.split('/')[2];
  if (sandboxes[id]?.state !== 'started') {
    // As Daytona's runner answers (Go sets Content-Length on small bodies).
    const body = JSON.stringify({ statusCode: 400, message: 'bad request: no IP address found. Is the Sandbox started?', code: 'BAD_REQUEST' });
    res.writeHead(400, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    return res.end(body);
  }
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end('<!doctype html><title>woken app</title><h1 id="app">the app is up</h1>');
});
await new Promise((r) => runner.listen(0, '127.0.0.1', r));

const api = http.createServer((req, res) => {
  const json = (status, body) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)); };
  const [, kind, id, action] = req.url.split('/');
  const sandbox = sandboxes[id] ?? sandboxes[action];
  if (kind === 'preview' && sandbox) return json(200, {});
  if (kind === 'runners' && sandbox) return json(200, { proxyUrl: `http://127.0.0.1:${runner.address().port}`, apiKey: 'k' });
  if (kind === 'sandbox' && sandbox && !action && req.method === 'GET') return json(200, { id, state: sandbox.state });
  if (kind === 'sandbox' && sandbox && action === 'start' && req.method === 'POST') {
    sandbox.starts += 1;
    sandbox.state = 'starting';
    setTimeout(() => { sandbox.state = 'started'; }, 2000);
    return json(200, {});
  }
  if (req.url.endsWith('/last-activity')) return json(201, {});
  return json(404, {});
});
await new Promise((r) => api.listen(0, '127.0.0.1', r));

const proxy = await startProxy('', { DAYTONA_API_URL: `http://127.0.0.1:${api.address().port}`, PROXY_API_KEY: 'k' });
const browser = await launchBrowser();
after(async () => { await browser.close(); proxy.stop(); api.close(); runner.close(); });
const url = (id) => `http://3000-${id}.preview.localhost:${proxy.port}/`;

test('a browser sees the waiting page, then the app, with no action', async () => {
  const page = await browser.newPage();
  const first = await page.goto(url('nap1'));
  assert.equal(first.status(), 503);
  assert.match(await page.textContent('body'), /The sandbox is starting/);
  assert.match(await page.textContent('body'), /state: starting/);
  await page.screenshot({ path: join(ARTIFACTS, 'waking-page.png') });
  // The page reloads itself until the app answers.
  await page.locator('#app', { hasText: 'the app is up' }).waitFor({ timeout: 20000 });
  assert.equal(sandboxes.nap1.starts, 1);
  await page.close();
});

test('curl is held and gets the app; a Slackbot unfurl starts nothing', async () => {
  const [botStatus, botBody] = await curl(url('nap2'), '-A', 'Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)');
  assert.equal(botStatus, 503);
  assert.match(botBody, /SANDBOX_STOPPED/);
  assert.equal(sandboxes.nap2.starts, 0, 'the bot started nothing');
  assert.equal(sandboxes.nap2.state, 'stopped');
  const [status, body] = await curl(url('nap2'), '--max-time', '30');
  assert.equal(status, 200, body);
  assert.match(body, /the app is up/);
  assert.equal(sandboxes.nap2.starts, 1);
});
