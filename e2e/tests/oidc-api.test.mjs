// Login for private previews in front of a Daytona API (SPEC 9): the proxy
// reads the provider from the API's GET /config, and the API decides access
// (GET /preview/{id}/access) from the signed-in person's access token, which
// this mock checks at the provider's userinfo endpoint.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startProxy, startProvider, signIn, launchBrowser, freePort } from '../harness.mjs';

const providerPort = await freePort();
const calls = { config: 0, access: [] };

// The runner: the app behind /sandboxes/{id}/toolbox/proxy/{port}/...
const runner = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><title>api app</title><p id="url">${req.url}</p>` +
    `<p id="email">${req.headers['x-forwarded-email'] ?? 'none'}</p>`);
});
await new Promise((r) => runner.listen(0, '127.0.0.1', r));

/** Who the provider says owns `token` (its userinfo endpoint), or null. */
async function emailOf(token) {
  const resp = await fetch(`http://127.0.0.1:${providerPort}/me`, { headers: { authorization: `Bearer ${token}` } });
  return resp.ok ? (await resp.json()).email : null;
}

const api = http.createServer(async (req, res) => {
  const json = (status, body) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)); };
  const path = req.url;
  if (path === '/config') {
    calls.config += 1;
    return json(200, { oidc: { issuer: `http://127.0.0.1:${providerPort}`, clientId: 'preview-proxy', audience: '' } });
  }
  if (path === '/preview/team1/public') return json(404, { message: 'not public' });
  if (path === '/runners/by-sandbox/team1') {
    return json(200, { proxyUrl: `http://127.0.0.1:${runner.address().port}`, apiKey: 'runner-key' });
  }
  if (path === '/preview/team1/access') {
    const token = (req.headers.authorization ?? '').replace(/^Bearer /, '');
    const email = await emailOf(token);
    calls.access.push(email);
    return email === 'alice@example.com' ? json(200, {}) : json(403, { message: 'no access' });
  }
  if (path.endsWith('/last-activity')) return json(200, {});
  return json(404, { message: 'not found' });
});
await new Promise((r) => api.listen(0, '127.0.0.1', r));

const proxy = await startProxy('', {
  DAYTONA_API_URL: `http://127.0.0.1:${api.address().port}`,
  PROXY_API_KEY: 'proxy-api-key',
  OIDC_CLIENT_SECRET: 'proxy-client-secret',
});
const base = `preview.localhost:${proxy.port}`;
const provider = await startProvider(providerPort, base);
const browser = await launchBrowser();
after(async () => { await browser.close(); proxy.stop(); provider.close(); api.close(); runner.close(); });

test('the provider comes from GET /config and the API decides access with the access token', async () => {
  const asked = `http://3000-team1.${base}/notebook?id=7`;
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(asked);
  assert.equal(new URL(page.url()).host, `127.0.0.1:${providerPort}`, 'sent to the provider /config names');
  assert.ok(calls.config >= 1);
  await signIn(page, 'alice', providerPort);
  await page.waitForURL(asked);
  assert.equal(await page.textContent('#url'), '/sandboxes/team1/toolbox/proxy/3000/notebook?id=7');
  assert.equal(await page.textContent('#email'), 'alice@example.com');
  assert.deepEqual(calls.access, ['alice@example.com'], 'the API saw the access token of the person');
  await context.close();

  const other = await browser.newContext();
  const page2 = await other.newPage();
  await page2.goto(asked);
  await signIn(page2, 'bob', providerPort);
  await page2.locator('h1', { hasText: 'You may not open this preview' }).waitFor();
  assert.match(await page2.textContent('body'), /bob@example\.com/);
  await other.close();
});
