// Test harness: the real preview-proxy binary on 127.0.0.1:0, small apps,
// and Debian's Chromium driven by playwright-core (no browser downloads).
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const execFileAsync = promisify(execFile);

const ROOT = new URL('..', new URL('.', import.meta.url)).pathname;
export const BIN = process.env.PREVIEW_PROXY_BIN ?? join(ROOT, 'target/debug/preview-proxy');
export const ARTIFACTS = join(ROOT, 'target/e2e-artifacts');
mkdirSync(ARTIFACTS, { recursive: true });

/** Starts the proxy with `registry` (TOML text); resolves once it listens. */
export async function startProxy(registry, env = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'pp-e2e-'));
  const registryFile = join(dir, 'registry.toml');
  writeFileSync(registryFile, registry);
  const childEnv = {
    PATH: process.env.PATH,
    PROXY_LISTEN_ADDRESS: '127.0.0.1',
    PROXY_PORT: '0',
    PROXY_API_KEY: 'e2e-secret',
    REGISTRY_FILE: registryFile,
    REGISTRY_RELOAD_INTERVAL_MS: '50',
    RUST_LOG: 'info',
    ...env,
  };
  const child = spawn(BIN, [], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`proxy did not start:\n${log}`)), 10000);
    child.stdout.on('data', (d) => {
      log += d;
      const m = log.match(/listening address=127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    child.stderr.on('data', (d) => { log += d; });
    child.on('exit', (code) => reject(new Error(`proxy exited (${code}):\n${log}`)));
  });
  const cli = async (...args) => {
    const { stdout } = await execFileAsync(BIN, args, { env: { ...childEnv, PROXY_DOMAIN: `preview.localhost:${port}` } });
    return stdout.trim();
  };
  return { port, registryFile, cli, log: () => log, stop: () => child.kill('SIGTERM') };
}

/** A plain HTTP app on 127.0.0.1:0 serving `html` on every path. */
export async function startApp(html) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(html);
  });
  await listenApp(server);
  return { port: server.address().port, close: () => server.close() };
}

/** The proxy's reserved ports (SPEC 2): they always need credentials. */
const RESERVED_PORTS = [22222, 2280, 2281, 33333];

/** Listens on 127.0.0.1 at a port that can stand in a preview host: the OS
 * may pick a reserved one (33333 is inside Linux's ephemeral range). */
export async function listenApp(server) {
  for (;;) {
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    if (!RESERVED_PORTS.includes(server.address().port)) return;
    await new Promise((r) => server.close(r));
  }
}

/** A TCP port nothing listens on. */
export async function freePort() {
  const s = net.createServer();
  await listenApp(s);
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/** Headless Chromium with a fresh profile (`extraArgs`: more flags). */
export function launchBrowser(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--no-first-run', '--disable-sync', '--disable-quic', ...extraArgs],
  });
}

/** `curl` as a person would run it: returns [status, body]. Every host
 * connects to 127.0.0.1 (curl does not resolve *.localhost itself). */
export async function curl(url, ...args) {
  // Asynchronous: the apps under test answer from this same process.
  const { stdout } = await execFileAsync('curl', ['-s', '--max-time', '10', '--connect-to', '::127.0.0.1:', '-w', '\n%{http_code}', ...args, url]);
  const i = stdout.lastIndexOf('\n');
  return [Number(stdout.slice(i + 1)), stdout.slice(0, i)];
}

/** Polls `check` until it is true (at most 10 s). */
export async function waitFor(check, what = 'condition') {
  const deadline = Date.now() + 10000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} not reached in 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A real OpenID Provider (npm oidc-provider, development login form) on
 * `port`, with one confidential client registered for the proxy at `base`
 * (`preview.localhost:<proxy port>`). Every account `x` has the verified
 * email `x@example.com`. Returns the server and a count of authorizations. */
export async function startProvider(port, base) {
  const { default: Provider } = await import('oidc-provider');
  const stats = { authorizations: 0 };
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [{
      client_id: 'preview-proxy',
      client_secret: 'proxy-client-secret',
      redirect_uris: [`http://${base}/callback`],
      post_logout_redirect_uris: [`http://${base}/logout/done`],
    }],
    async findAccount(ctx, id) {
      return { accountId: id, claims: async () => ({ sub: id, email: `${id}@example.com`, email_verified: true }) };
    },
    claims: { openid: ['sub'], email: ['email', 'email_verified'] },
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: true } },
  });
  provider.use(async (ctx, next) => { if (ctx.path === '/auth') stats.authorizations += 1; await next(); });
  const server = provider.listen(port);
  return { issuer: `http://127.0.0.1:${port}`, stats, close: () => server.close() };
}

/** Signs `login` in on the provider's development form (and consents). */
export async function signIn(page, login, providerPort) {
  await page.locator('input[name="login"]').waitFor();
  await page.fill('input[name="login"]', login);
  await page.fill('input[name="password"]', 'any');
  await page.click('button[type="submit"]');
  // The provider asks for consent once per account and client.
  const consent = page.locator('button[type="submit"]', { hasText: 'Continue' });
  const left = page.waitForURL((u) => u.host !== `127.0.0.1:${providerPort}`).then(() => 'left', () => 'left');
  const asks = consent.waitFor().then(() => 'consent', () => 'left');
  if (await Promise.race([left, asks]) === 'consent') await consent.click();
}
