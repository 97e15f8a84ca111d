import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startProxy, startApp, launchBrowser, curl, ARTIFACTS } from '../harness.mjs';

const app = await startApp('<!doctype html><title>App</title><h1>Hello from the sandbox app</h1>');
const proxy = await startProxy('[[sandboxes]]\nid = "demo"\npublic = true\nupstream = "127.0.0.1"\n', {
  PREVIEW_WARNING_ENABLED: 'true',
  PREVIEW_WARNING_PRODUCT_NAME: 'Acme Sandboxes',
});
const browser = await launchBrowser();
after(async () => { await browser.close(); proxy.stop(); app.close(); });

const url = `http://${app.port}-demo.preview.localhost:${proxy.port}/welcome?from=e2e`;

test('a first visit shows the warning, continue leads to the app, then it stays away', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(url);
  await page.getByRole('heading', { name: 'You are about to open a sandbox preview' }).waitFor();
  assert.match(await page.textContent('body'), /Acme Sandboxes/);
  assert.equal((await page.textContent('.url')).trim(), url);
  await page.screenshot({ path: join(ARTIFACTS, 'warning-page.png') });

  await Promise.all([page.waitForURL(url), page.getByRole('button', { name: 'Continue to the preview' }).click()]);
  await page.getByRole('heading', { name: 'Hello from the sandbox app' }).waitFor();

  const cookies = await context.cookies();
  const accepted = cookies.find((c) => c.name === 'daytona-preview-page-accepted');
  assert.equal(accepted?.value, 'true');
  assert.equal(accepted.httpOnly, true);

  await page.reload();
  await page.getByRole('heading', { name: 'Hello from the sandbox app' }).waitFor();
  await context.close();
});

test('curl never sees the page', async () => {
  const [status, body] = await curl(url, '-H', 'Accept: text/html');
  assert.equal(status, 200);
  assert.match(body, /Hello from the sandbox app/);
});
