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
