// Login for private previews (SPEC 9) against a real OpenID Provider: the
// npm package oidc-provider, started here with one client registered for
// the proxy's callback and its development login form.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startProxy, startProvider, signIn, launchBrowser, curl, freePort, listenApp, ARTIFACTS } from '../harness.mjs';
import { join } from 'node:path';

// The app shows who the proxy says signed in.
const app = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><title>private app</title><p id="path">${req.url}</p>` +
    `<p id="email">${req.headers['x-forwarded-email'] ?? 'none'}</p><p id="user">${req.headers['x-forwarded-user'] ?? 'none'}</p>`);
});
await listenApp(app);
const appPort = app.address().port;

const providerPort = await freePort();
const issuer = `http://127.0.0.1:${providerPort}`;
const registry = [
  '[[sandboxes]]', 'id = "app1"', 'upstream = "127.0.0.1"', 'viewers = ["alice@example.com"]', '',
  '[[sandboxes]]', 'id = "open1"', 'public = true', 'upstream = "127.0.0.1"', '',
].join('\n');
const proxy = await startProxy(registry, {
  OIDC_DOMAIN: issuer, OIDC_CLIENT_ID: 'preview-proxy', OIDC_CLIENT_SECRET: 'proxy-client-secret',
});
const base = `preview.localhost:${proxy.port}`;

const provider = await startProvider(providerPort, base);

const browser = await launchBrowser();
after(async () => { await browser.close(); proxy.stop(); app.close(); provider.close(); });

const preview = `http://${appPort}-app1.${base}`;

test('a private preview signs a person in and returns to the exact page', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const asked = `${preview}/deep/page?tab=2&x=%2F`;
  await page.goto(asked);
  assert.equal(new URL(page.url()).host, `127.0.0.1:${providerPort}`, 'the browser is at the provider');
  await signIn(page, 'alice', providerPort);
  await page.waitForURL(asked);
  assert.equal(await page.textContent('#path'), '/deep/page?tab=2&x=%2F');
  assert.equal(await page.textContent('#email'), 'alice@example.com', 'the app knows who signed in');
  assert.equal(await page.textContent('#user'), 'alice');
  await page.screenshot({ path: join(ARTIFACTS, 'oidc-login.png') });

  // A reload goes straight in: no new visit to the provider.
  const before = provider.stats.authorizations;
  await page.reload();
  assert.equal(page.url(), asked);
  assert.equal(await page.textContent('#email'), 'alice@example.com');
  assert.equal(provider.stats.authorizations, before);

  // A client's own X-Forwarded-Email never reaches the app.
  const cookie = (await context.cookies()).find((c) => c.name === 'daytona-sandbox-auth-app1');
  assert.ok(cookie?.httpOnly, 'the auth cookie is set, HttpOnly');
  const [status, body] = await curl(`${preview}/`, '-H', `Cookie: ${cookie.name}=${cookie.value}`,
    '-H', 'X-Forwarded-Email: mallory@example.com', '-H', 'X-Forwarded-User: mallory');
  assert.equal(status, 200);
  assert.match(body, /<p id="email">alice@example.com<\/p>/);
  assert.match(body, /<p id="user">alice<\/p>/);
  const open = `http://${appPort}-open1.${base}/`;
  const [, anon] = await curl(open, '-H', 'X-Forwarded-Email: mallory@example.com', '-H', 'X-Forwarded-User: mallory');
  assert.match(anon, /<p id="email">none<\/p>/);
  assert.match(anon, /<p id="user">none<\/p>/);

  // /logout ends the session: the cookie is gone, the preview asks again.
  await page.goto(`http://${base}/logout`);
  const confirm = page.locator('button', { hasText: 'Yes, sign me out' });
  if (await confirm.count()) await confirm.click();
  await page.waitForURL(`http://${base}/logout/done`);
  assert.ok(!(await context.cookies()).some((c) => c.name === 'daytona-sandbox-auth-app1'), 'the auth cookie is cleared');
  await page.goto(`${preview}/`);
  assert.equal(new URL(page.url()).host, `127.0.0.1:${providerPort}`, 'signed out: back to the provider');
  await context.close();
});

test('an account that is not a viewer gets a 403 naming it, with a way to switch', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const responses = [];
  page.on('response', (r) => responses.push([r.url(), r.status()]));
  await page.goto(`${preview}/`);
  await signIn(page, 'bob', providerPort);
  await page.locator('h1', { hasText: 'You may not open this preview' }).waitFor();
  assert.match(await page.textContent('body'), /bob@example\.com/);
  assert.ok(responses.some(([u, s]) => u.startsWith(`http://${base}/callback`) && s === 403), JSON.stringify(responses));
  const link = page.locator('a', { hasText: 'Sign in with another account' });
  assert.ok((await link.getAttribute('href')).startsWith(`http://${base}/login?return=`));
  assert.ok(!(await context.cookies()).some((c) => c.name === 'daytona-sandbox-auth-app1'));
  await context.close();
});

const browserHeaders = ['-A', 'Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36', '-H', 'Accept: text/html'];

test('fetches and WebSockets get 401, never a redirect to the provider', async () => {
  const [fetchStatus] = await curl(`${preview}/`, ...browserHeaders, '-H', 'Sec-Fetch-Mode: cors');
  assert.equal(fetchStatus, 401);
  const [wsStatus] = await curl(`${preview}/socket`, ...browserHeaders, '-H', 'Connection: Upgrade', '-H', 'Upgrade: websocket',
    '-H', 'Sec-WebSocket-Version: 13', '-H', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==');
  assert.equal(wsStatus, 401);
  const [apiStatus] = await curl(`${preview}/`);
  assert.equal(apiStatus, 401, 'curl without browser headers');
  const [navStatus] = await curl(`${preview}/`, ...browserHeaders, '-H', 'Sec-Fetch-Mode: navigate');
  assert.equal(navStatus, 302, 'a navigation is sent to sign in');
});

test('a callback whose state was tampered with, or that this browser never started, is a 400', async () => {
  const [, headers] = await curl(`${preview}/here`, ...browserHeaders, '-D', '-', '-o', '/dev/null');
  const location = headers.match(/^location: (.*)$/mi)[1].trim();
  const state = new URL(location).searchParams.get('state');
  const loginCookie = headers.match(/^set-cookie: ([^;]*)/mi)[1];
  assert.ok(loginCookie.startsWith(`preview-proxy-login-${state}=`), loginCookie);
  const tampered = state.slice(0, -1) + (state.endsWith('A') ? 'B' : 'A');
  const [bad] = await curl(`http://${base}/callback?code=abc&state=${tampered}`, '-H', `Cookie: ${loginCookie}`);
  assert.equal(bad, 400);
  const value = loginCookie.split('=')[1];
  const [forged] = await curl(`http://${base}/callback?code=abc&state=${tampered}`,
    '-H', `Cookie: preview-proxy-login-${tampered}=${value}`);
  assert.equal(forged, 400, 'a login cookie moved to another state does not verify');
  const [none] = await curl(`http://${base}/callback?code=abc&state=${state}`);
  assert.equal(none, 400, 'no login cookie');
  const [open] = await curl(`http://${base}/login?return=${encodeURIComponent('http://evil.example/')}`);
  assert.equal(open, 400, 'no open redirect');
});
