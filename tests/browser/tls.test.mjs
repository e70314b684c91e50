// The demo page over TLS in real headless Chromium: `node tls.test.mjs
// https://localhost:PORT`, against a Parlor started with --tls-cert/--tls-key
// (a certificate of a CA made at test time, which this browser is told to
// accept). The page is loaded over https://, opens its WebSocket as wss:// on
// its own origin (the Origin check passes), and a message sent from the page
// comes back as a live event over that WebSocket.
//
// Driven by tests/browser_tls.rs. Uses Debian's /usr/bin/chromium through
// playwright-core; it never downloads a browser.

import assert from 'node:assert/strict';
import { launchChromium, until as untilWithin, watchdog as startWatchdog } from './harness.mjs';

const [base] = process.argv.slice(2);
if (!/^https:\/\/localhost:\d+$/.test(base ?? '')) {
  console.error('usage: node tls.test.mjs https://localhost:PORT');
  process.exit(2);
}
const TIMEOUT = 15_000;

// A hung browser must not hang CI.
const watchdog = startWatchdog(120);

const until = (what, fn, timeout = TIMEOUT) => untilWithin(what, fn, timeout);

const browser = await launchChromium();
let failed = false;
try {
  // The test CA is not in the system's roots: accept its certificate here
  // (the Rust side checks the chain with a client that trusts only that CA).
  const context = await browser.newContext({ baseURL: base, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  page.on('pageerror', (err) => problems.push(`uncaught ${err.stack || err}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`);
  });
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  const field = (label) => page.getByLabel(label, { exact: true }).filter({ visible: true });

  await page.goto('/');
  assert.equal(new URL(page.url()).protocol, 'https:', 'the page is served over https');
  await page.getByRole('heading', { name: 'Log in', exact: true }).waitFor();
  await page.getByRole('button', { name: 'Register', exact: true }).click();
  const username = `tls${Date.now() % 100000}`;
  const password = 'zebra-quartz-71';
  await field('Username').fill(username);
  await field('Password').fill(password);
  await field('Confirm password').fill(password);
  await page.getByRole('button', { name: 'Register', exact: true }).click();
  await page.getByRole('heading', { name: 'Log in', exact: true }).waitFor();
  await field('Username').fill(username);
  await field('Password').fill(password);
  await field('Password').press('Enter');
  // A local room is titled without its server part; the full alias is in data-alias.
  await until('the lobby', async () => (await page.locator('#room-title').textContent()) === '#lobby'
    && (await page.locator('#room-title').getAttribute('data-alias')).startsWith('#lobby:'));
  await until('connected', async () => (await page.locator('#connection').textContent()) === 'connected');

  const wsUrl = `wss://${new URL(base).host}/_parlor/client/v1/ws`;
  assert.deepEqual(sockets, [wsUrl], 'one WebSocket, wss:// on the page\'s own origin');

  const body = 'over wss';
  await field('Message').fill(body);
  await field('Message').press('Enter');
  await until(`“${body}” on screen`, async () =>
    (await page.locator('#messages > li.message .body').allTextContents()).includes(body));
  assert.deepEqual(problems, [], 'no page errors');
  console.log('ok: the demo page over https:// with its WebSocket over wss://');
} catch (err) {
  failed = true;
  console.error(err);
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
process.exit(failed ? 1 : 0);
