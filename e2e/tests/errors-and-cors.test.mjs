// Error pages a person understands, and cross-origin fetch with credentials.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { join } from 'node:path';
import { startProxy, startApp, launchBrowser, freePort, ARTIFACTS } from '../harness.mjs';

const proxy = await startProxy('[[sandboxes]]\nid = "demo"\npublic = true\nupstream = "127.0.0.1"\n');
const browser = await launchBrowser();
const apps = [];
after(async () => { await browser.close(); proxy.stop(); apps.forEach((a) => a.close()); });

const pages = [
  ['unknown sandbox', (p) => `http://3000-nosuchsandbox.preview.localhost:${p}/`, 401, /needs credentials/, /private or does not exist/],
  ['nothing listening', null, 502, /Nothing is listening on port/, /Start your app on port/],
  ['not a preview URL', (p) => `http://proxy.localhost:${p}/somewhere`, 404, /No preview at this address/, /<port>-<sandboxId>/],
];

for (const [name, make, status, heading, advice] of pages) {
  test(`error page: ${name}`, async () => {
    const port = await freePort();
    const url = make ? make(proxy.port) : `http://${port}-demo.preview.localhost:${proxy.port}/`;
    const page = await browser.newPage();
    const resp = await page.goto(url);
    assert.equal(resp.status(), status);
    await page.getByRole('heading', { name: heading }).waitFor();
    assert.match(await page.textContent('body'), advice);
    await page.screenshot({ path: join(ARTIFACTS, `error-${name.replaceAll(' ', '-')}.png`) });
    await page.close();
  });
}

test('cross-origin fetch with credentials and a custom header', async () => {
  // The preview answers JSON and never sees the preflight.
  let preflightsAtApp = 0;
  const api = http.createServer((req, res) => {
    if (req.method === 'OPTIONS') preflightsAtApp += 1;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ custom: req.headers['x-custom'] ?? null }));
  });
  await new Promise((r) => api.listen(0, '127.0.0.1', r));
  apps.push(api);
  const target = `http://${api.address().port}-demo.preview.localhost:${proxy.port}/api`;
  // A page on another origin calls it.
  const origin = await startApp(`<!doctype html><body><script>
    fetch(${JSON.stringify(target)}, { credentials: 'include', headers: { 'X-Custom': 'from-page' } })
      .then((r) => r.json()).then((j) => { document.body.dataset.result = 'ok ' + j.custom; })
      .catch((e) => { document.body.dataset.result = 'failed ' + e; });
  </script></body>`);
  apps.push(origin);
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${origin.port}/`);
  await page.waitForFunction(() => document.body.dataset.result);
  assert.equal(await page.evaluate(() => document.body.dataset.result), 'ok from-page');
  assert.equal(preflightsAtApp, 0, 'the proxy answered the preflight');
  await page.close();
});

test('with X-Daytona-Disable-CORS from a front proxy, the app answers CORS itself', async () => {
  // The app does its own CORS and says so.
  let preflightsAtApp = 0;
  const api = http.createServer((req, res) => {
    const cors = {
      'access-control-allow-origin': req.headers.origin ?? '*',
      'access-control-allow-credentials': 'true',
      'access-control-expose-headers': 'x-cors-by',
      'x-cors-by': 'app',
    };
    if (req.method === 'OPTIONS') {
      preflightsAtApp += 1;
      res.writeHead(204, { ...cors, 'access-control-allow-headers': 'x-custom' });
      return res.end();
    }
    res.writeHead(200, { ...cors, 'content-type': 'application/json' });
    res.end(JSON.stringify({ custom: req.headers['x-custom'] ?? null }));
  });
  await new Promise((r) => api.listen(0, '127.0.0.1', r));
  apps.push(api);
  // A customer's front proxy that adds the header.
  const front = http.createServer((req, res) => {
    const headers = { ...req.headers, 'x-daytona-disable-cors': 'true' };
    const up = http.request({ host: '127.0.0.1', port: proxy.port, method: req.method, path: req.url, headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    req.pipe(up);
  });
  await new Promise((r) => front.listen(0, '127.0.0.1', r));
  apps.push(front);
  const target = `http://${api.address().port}-demo.preview.localhost:${front.address().port}/api`;
  const origin = await startApp(`<!doctype html><body><script>
    fetch(${JSON.stringify(target)}, { credentials: 'include', headers: { 'X-Custom': 'via-front' } })
      .then(async (r) => { const j = await r.json(); document.body.dataset.result = j.custom + ' ' + r.headers.get('x-cors-by'); })
      .catch((e) => { document.body.dataset.result = 'failed ' + e; });
  </script></body>`);
  apps.push(origin);
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${origin.port}/`);
  await page.waitForFunction(() => document.body.dataset.result);
  assert.equal(await page.evaluate(() => document.body.dataset.result), 'via-front app');
  assert.equal(preflightsAtApp, 1, 'the preflight reached the app');
  await page.close();
});
