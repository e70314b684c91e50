// End-to-end test of the demo page in real headless Chromium, against real
// Parlor servers: `node demo.test.mjs http://127.0.0.1:PORT http://127.0.0.1:PORT2`,
// the second one started with `--retention 5` (for the `gap` step).
//
// Driven by tests/browser.rs (cargo test --test browser). Uses Debian's
// /usr/bin/chromium through playwright-core; it never downloads a browser.
// With PARLOR_SCREENSHOTS=1 it also writes the screenshots in docs/.
//
// Every page fails the test on an uncaught exception or a console error,
// except the few network messages Chromium itself logs for the failures a
// step provokes on purpose (a refused registration, room name or direct
// message, a dropped connection): Chromium logs every HTTP error answer, which
// no page can prevent. Refusals the page can avoid asking for are checked to
// log nothing: an invalid room name (said by the page itself), and joining a
// private room or one is banned from (asked over the WebSocket, whose `error`
// frame logs nothing).
//
// Protocol v1.1 with two and three people: a private room created from the
// sidebar, invites declined and accepted, a direct message, typing, online
// dots, unread badges and the read marker, grouped messages, inline edits and
// deletions, room settings, roles, kick, ban, unban and leaving.

import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { launchChromium, until as untilWithin, watchdog as startWatchdog } from './harness.mjs';

const [base, retentionBase, tokenBase, registrationToken] = process.argv.slice(2);
if (![base, retentionBase, tokenBase].every((u) => /^http:\/\/127\.0\.0\.1:\d+$/.test(u ?? '')) || !registrationToken) {
  console.error('usage: node demo.test.mjs http://127.0.0.1:PORT http://127.0.0.1:PORT_OF_A_SERVER_WITH_RETENTION_5 '
    + 'http://127.0.0.1:PORT_OF_A_SERVER_WITH_REGISTRATION_TOKEN TOKEN');
  process.exit(2);
}
const screenshots = process.env.PARLOR_SCREENSHOTS === '1';
const docsDir = fileURLToPath(new URL('../../docs/', import.meta.url));
const TIMEOUT = 15_000; // for one thing to appear on a page

// A hung browser must not hang CI.
const watchdog = startWatchdog(270);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

let stepNo = 0;
async function step(name, fn) {
  stepNo += 1;
  const t0 = Date.now();
  try {
    await fn();
  } catch (err) {
    console.error(`✘ ${stepNo}. ${name}`);
    throw err;
  }
  console.log(`✔ ${stepNo}. ${name} (${Date.now() - t0} ms)`);
}

const until = (what, fn, timeout = TIMEOUT) => untilWithin(what, fn, timeout);

const problems = []; // page errors and unexpected console errors, from every page

/**
 * One person: their own browser context (so their own sessionStorage) and tab.
 * `allow(re, during)` accepts console errors matching `re` while `during` runs.
 */
async function person(browser, name, { url = base, viewport = { width: 1100, height: 720 } } = {}) {
  const context = await browser.newContext({ viewport, baseURL: url });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const allowed = [];
  page.on('pageerror', (err) => problems.push(`${name}: uncaught ${err.stack || err}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (allowed.some((re) => re.test(text))) return;
    problems.push(`${name}: console error: ${text}`);
  });
  // The page must work offline: nothing from any other host, ever.
  const origin = new URL(url).origin;
  page.on('request', (req) => {
    const u = req.url();
    if (!u.startsWith(origin + '/') && !u.startsWith('data:')) problems.push(`${name}: request to another origin: ${u}`);
  });
  return {
    name,
    page,
    context,
    async allow(re, during) {
      allowed.push(re);
      try {
        return await during();
      } finally {
        allowed.splice(allowed.indexOf(re), 1);
      }
    },
  };
}

// Chromium logs every HTTP error answer a page receives; these are the ones we provoke.
const HTTP_4XX = /^Failed to load resource: the server responded with a status of 4(00|03|04|09)\b/;
const HTTP_401 = /^Failed to load resource: the server responded with a status of 401\b/;
// And a dropped connection makes reconnect attempts fail until it is back.
const NET_DOWN = /^(WebSocket connection to '.*' failed|Failed to load resource: net::ERR_)/;

/** The visible field with this label (the login and register forms both have a Username). */
const field = (p, label) => p.page.getByLabel(label, { exact: true }).filter({ visible: true });
const heading = (p, name) => p.page.getByRole('heading', { name, exact: true });

async function shot(p, file) {
  if (!screenshots) return;
  mkdirSync(docsDir, { recursive: true });
  await p.page.screenshot({ path: docsDir + file });
  console.log(`  screenshot docs/${file}`);
}

/** The events on screen: {seq, sender, body, membership} in screen order. */
async function timeline(p) {
  return p.page.locator('#messages > li.message').evaluateAll((lis) =>
    lis.map((li) => ({
      seq: Number(li.dataset.seq),
      sender: li.querySelector('.sender').textContent,
      time: li.querySelector('.time').textContent,
      body: li.querySelector('.body').textContent,
      membership: li.classList.contains('membership'),
    })));
}

async function messages(p) {
  return (await timeline(p)).filter((m) => !m.membership);
}

async function waitForMessage(p, sender, body) {
  return until(`${p.name} to see “${body}” from ${sender}`, async () => {
    const found = (await messages(p)).filter((m) => m.body === body);
    return found.length > 0 && found;
  }).then((found) => {
    assert.equal(found.length, 1, `${p.name} shows “${body}” once`);
    assert.equal(found[0].sender, sender, `${p.name} shows the sender of “${body}”`);
    assert.match(found[0].time, /\d/, 'each message shows its time');
    return found[0];
  });
}

async function members(p) {
  return p.page.locator('#members li .member-name').allTextContents();
}

async function waitForMembers(p, names) {
  await until(`${p.name}'s member list to be ${names}`, async () => {
    const got = await members(p);
    return JSON.stringify(got) === JSON.stringify(names) && got;
  });
}

/** The joined rooms in the sidebar: {name, badge, current, private}. */
async function roomList(p) {
  return p.page.locator('#room-list li').evaluateAll((lis) => lis.map((li) => ({
    name: li.querySelector('.room-name').textContent,
    badge: li.querySelector('.badge')?.textContent ?? '',
    current: li.querySelector('button').getAttribute('aria-current') === 'true',
    private: Boolean(li.querySelector('.private')),
  })));
}

async function clickRoom(p, name) {
  await p.page.locator('#room-list li .room-name').getByText(name, { exact: true }).click();
}

/** Members with a role above `member`, as {name: role}. */
async function memberRoles(p) {
  return Object.fromEntries(await p.page.locator('#members li').evaluateAll((lis) => lis
    .filter((li) => li.querySelector('.role'))
    .map((li) => [li.querySelector('.member-name').textContent, li.querySelector('.role').textContent])));
}

/** The online dot of `name` in the member list: "online", "offline" or null when not listed. */
async function presenceOf(p, name) {
  return p.page.locator('#members li').evaluateAll((lis, n) => {
    const li = lis.find((x) => x.querySelector('.member-name').textContent === n);
    return li ? li.querySelector('.presence').dataset.presence : null;
  }, name);
}

async function inviteUser(p, name) {
  await field(p, 'Invite someone').fill(name);
  await p.page.getByRole('button', { name: 'Invite', exact: true }).click();
  await until(`${p.name}’s “Invited ${name}.”`, async () =>
    (await p.page.locator('#invite-done').textContent()) === `Invited ${name}.`
    && p.page.locator('#invite-done').isVisible());
}

/** Exactly once and in order: the seqs on screen are 1, 2, 3, … with nothing missing or repeated. */
async function assertGapFree(p) {
  const seqs = (await timeline(p)).map((m) => m.seq);
  const first = seqs[0];
  assert.deepEqual(seqs, seqs.map((_, i) => first + i), `${p.name}'s timeline has no hole and no duplicate`);
}

async function register(p, username, password, confirm = password) {
  const { page } = p;
  await field(p, 'Username').fill(username);
  await field(p, 'Password').fill(password);
  await field(p, 'Confirm password').fill(confirm);
  await page.getByRole('button', { name: 'Register', exact: true }).click();
}

async function registerRefused(p, username, password, expected, confirm = password) {
  const error = p.page.locator('#register-error');
  await p.allow(HTTP_4XX, async () => {
    await error.evaluate((e) => { e.textContent = ''; });
    await register(p, username, password, confirm);
    await until(`the refusal “${expected}”`, async () => (await error.isVisible()) && (await error.textContent()));
  });
  const text = await error.textContent();
  assert.match(text, expected, `registering ${username}/${password} is refused in words`);
  assert.ok(await heading(p, 'Create an account').isVisible(), 'a refusal stays on the register form');
}

/** Registers from the login page, lands on the login form, logs in, lands in the lobby. */
async function signUp(p, username, password) {
  const { page } = p;
  await page.goto('/');
  await heading(p, 'Log in').waitFor();
  await page.getByRole('button', { name: 'Register', exact: true }).click();
  await heading(p, 'Create an account').waitFor();
  await register(p, username, password);
  await heading(p, 'Log in').waitFor();
  assert.equal(await field(p, 'Username').inputValue(), username,
    'the login form has the new username filled in');
  await logIn(p, username, password);
}

async function logIn(p, username, password) {
  const { page } = p;
  await field(p, 'Username').fill(username);
  await field(p, 'Password').fill(password);
  await field(p, 'Password').press('Enter');
  await waitForRoom(p, 'lobby');
}

/** Waits until the room on screen is the local room `name`, titled `#name` (without the server part). */
async function waitForRoom(p, name, title = `#${name.toLowerCase()}`) {
  await until(`${p.name} to be in #${name}`, async () => {
    const h = p.page.locator('#room-title');
    return (await h.getAttribute('data-alias'))?.startsWith(`#${name.toLowerCase()}:`) && (await h.textContent()) === title;
  });
  await until(`${p.name} to be connected`, async () =>
    (await p.page.locator('#connection').textContent()) === 'connected');
}

async function joinRoom(p, name) {
  await field(p, 'Room').fill(name);
  await p.page.getByRole('button', { name: 'Join', exact: true }).click();
  await waitForRoom(p, name);
}

async function send(p, text) {
  const input = field(p, 'Message');
  await input.fill(text);
  await input.press('Enter');
  assert.equal(await input.inputValue(), '', 'Enter sends and empties the field');
}

/** The protocol spoken directly, for what the test sets up behind the pages' backs. */
async function http(url, method, path, { token, body } = {}) {
  const res = await fetch(`${url}/_parlor/client/v1${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/**
 * A TCP relay between one browser and the server, so the test can cut the
 * network under a live WebSocket (as a lost Wi-Fi would) and bring it back.
 */
async function relay(target) {
  const { hostname, port } = new URL(target);
  const open = new Set();
  let down = false;
  const server = net.createServer((client) => {
    if (down) return client.resetAndDestroy();
    const upstream = net.connect(Number(port), hostname);
    open.add(client);
    open.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      down = true;
      for (const s of open) s.resetAndDestroy();
      open.clear();
    },
    restore() {
      down = false;
    },
    close() {
      for (const s of open) s.destroy();
      server.close();
    },
  };
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

const browser = await launchChromium();
const net2 = await relay(base);
const net3 = await relay(retentionBase);
let failed = false;

try {
  await step('the page is served with a CSP that forbids inline script and other origins', async () => {
    const res = await fetch(base + '/');
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/html/);
    const csp = res.headers.get('content-security-policy') ?? '';
    assert.match(csp, /default-src 'none'/, `CSP: ${csp}`);
    assert.match(csp, /script-src 'self'(;|$)/, `CSP: ${csp}`);
    assert.match(csp, /connect-src 'self'(;|$)/, `CSP: ${csp}`);
    for (const path of ['/app.js', '/style.css']) {
      const r = await fetch(base + path);
      assert.equal(r.status, 200, path);
    }
  });

  const alice = await person(browser, 'alice');
  const bob = await person(browser, 'bob', { viewport: { width: 390, height: 780 } }); // a phone
  const pw = { alice: 'correct horse battery', bob: 'tulip-harbour-77', carol: 'quiet lantern 1942' };

  await step('a new visitor gets the login form, with a way to register', async () => {
    await alice.page.goto('/');
    await heading(alice, 'Log in').waitFor();
    await shot(alice, 'demo-login.png');
    await alice.page.getByRole('button', { name: 'Register', exact: true }).click();
    await heading(alice, 'Create an account').waitFor();
    assert.equal(await alice.page.evaluate(() => document.activeElement.id), 'register-username',
      'the register form puts the focus in its first field');
  });

  await step('a server that asks for a registration token gets one in the register form, and no other does', async () => {
    const tina = await person(browser, 'tina', { url: tokenBase });
    await tina.page.goto('/');
    await heading(tina, 'Log in').waitFor();
    await tina.page.getByRole('button', { name: 'Register', exact: true }).click();
    await heading(tina, 'Create an account').waitFor();
    await field(tina, 'Registration token').waitFor();
    await registerRefused(tina, 'tina', 'lilac-meadow-53', /enter your registration token/i);
    await field(tina, 'Registration token').fill('not-a-token');
    await registerRefused(tina, 'tina', 'lilac-meadow-53', /not valid/i);
    await field(tina, 'Registration token').fill(registrationToken);
    await register(tina, 'tina', 'lilac-meadow-53');
    await heading(tina, 'Log in').waitFor();
    assert.match(await tina.page.locator('#login-notice').textContent(), /@tina:/);
    await tina.context.close();
    // The open server answered `registration: "open"` by now (alice's form
    // asked when it opened): its token field stays hidden.
    const v = await (await fetch(base + '/_parlor/versions')).json();
    assert.equal(v.registration, 'open');
    assert.equal(await alice.page.locator('#register-token-field').isVisible(), false);
  });

  await step('registration refusals are shown in words', async () => {
    await registerRefused(alice, 'alice', 'one two three', /passwords differ/i, 'one two tree');
    await registerRefused(alice, 'alice', 'short', /too short/i);
    await registerRefused(alice, 'alice', 'alice2024', /too similar/i);
    await registerRefused(alice, 'al ice', pw.alice, /usernames are 1–32 characters/i);
    await registerRefused(alice, 'alice', '4082931757', /digits/i);
    await registerRefused(alice, 'alice', 'password', /too common/i);
    await shot(alice, 'demo-register-error.png');
  });

  await step('alice registers, gets the login form, logs in and lands in the lobby', async () => {
    await register(alice, 'Alice', pw.alice);
    await heading(alice, 'Log in').waitFor();
    assert.match(await alice.page.locator('#login-notice').textContent(), /@alice:/);
    await logIn(alice, 'alice', pw.alice);
    assert.equal(await alice.page.evaluate(() => document.activeElement.id), 'message',
      'after login the message field has the focus');
    await alice.page.keyboard.press('Tab');
    const focus = await alice.page.evaluate(() => {
      const e = document.activeElement;
      return { text: e.textContent, outline: getComputedStyle(e).outlineStyle, width: getComputedStyle(e).outlineWidth };
    });
    assert.equal(focus.text, 'Send', 'Tab goes from the message field to Send');
    assert.ok(focus.outline !== 'none' && focus.width !== '0px', `the keyboard focus is visible: ${JSON.stringify(focus)}`);
  });

  await step('a taken username is refused in words', async () => {
    await bob.page.goto('/');
    await bob.page.getByRole('button', { name: 'Register', exact: true }).click();
    await registerRefused(bob, 'ALICE', 'some other words', /taken/i);
  });

  await step('bob registers and logs in (on a phone-sized screen)', async () => {
    await register(bob, 'bob', pw.bob);
    await heading(bob, 'Log in').waitFor();
    await logIn(bob, 'bob', pw.bob);
  });

  await step('both join #garden with the Room field; the member list shows both', async () => {
    await joinRoom(alice, 'garden');
    await joinRoom(bob, 'Garden');
    await waitForMembers(alice, ['alice', 'bob']);
    await waitForMembers(bob, ['alice', 'bob']);
    assert.ok(await bob.page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth),
      'nothing sticks out sideways on a phone-sized screen');
  });

  await step('alice sends with Enter; bob sees it live with her name', async () => {
    await send(alice, 'Hello Bob, welcome to the garden!');
    await waitForMessage(bob, 'alice', 'Hello Bob, welcome to the garden!');
    await waitForMessage(alice, 'alice', 'Hello Bob, welcome to the garden!');
    await send(bob, 'Thanks! The roses are out already.');
    await waitForMessage(alice, 'bob', 'Thanks! The roses are out already.');
    await send(alice, 'Tea at four?');
    await waitForMessage(bob, 'alice', 'Tea at four?');
    await send(bob, 'Sure — à tout à l’heure.');
    await waitForMessage(alice, 'bob', 'Sure — à tout à l’heure.');
    // The README's screenshots: a normal conversation, taken before the
    // <script> check below, which runs in a room of its own.
    await shot(alice, 'demo-chat.png');
    await shot(bob, 'demo-chat-phone.png');
  });

  const script = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> <b>bold?</b>';
  await step('a message with <script> is shown as typed and runs nothing', async () => {
    await joinRoom(alice, 'sandbox');
    await joinRoom(bob, 'sandbox');
    await field(bob, 'Message').fill(script);
    await bob.page.getByRole('button', { name: 'Send', exact: true }).click();
    for (const p of [alice, bob]) {
      await waitForMessage(p, 'bob', script);
      assert.equal(await p.page.locator('#messages script, #messages img, #messages b').count(), 0,
        `${p.name}: the message made no elements`);
      assert.equal(await p.page.evaluate(() => window.__pwned), undefined, `${p.name}: nothing ran`);
    }
    await send(alice, 'Ha, nice try.');
    await waitForMessage(bob, 'alice', 'Ha, nice try.');
    await joinRoom(alice, 'garden');
    await joinRoom(bob, 'garden');
    await waitForMessage(alice, 'bob', 'Sure — à tout à l’heure.');
  });

  // carol's tab reaches the server through a relay the test can cut.
  const carol = await person(browser, 'carol', { url: net2.url });

  await step('carol joins later and sees the history, then live messages', async () => {
    await signUp(carol, 'carol', pw.carol);
    await joinRoom(carol, 'garden');
    const seen = await messages(carol);
    assert.deepEqual(seen.map((m) => [m.sender, m.body]), [
      ['alice', 'Hello Bob, welcome to the garden!'],
      ['bob', 'Thanks! The roses are out already.'],
      ['alice', 'Tea at four?'],
      ['bob', 'Sure — à tout à l’heure.'],
    ], 'carol sees the room history in order, with senders');
    // The <script> message, met in history rather than live, stays text too.
    await joinRoom(carol, 'sandbox');
    await waitForMessage(carol, 'bob', script);
    assert.equal(await carol.page.locator('#messages script, #messages img, #messages b').count(), 0,
      'carol: the message from history made no elements');
    assert.equal(await carol.page.evaluate(() => window.__pwned), undefined);
    await joinRoom(carol, 'garden');
    await waitForMessage(carol, 'bob', 'Sure — à tout à l’heure.');
    await waitForMembers(alice, ['alice', 'bob', 'carol']);
    await send(bob, 'Hi Carol!');
    await waitForMessage(carol, 'bob', 'Hi Carol!');
    await assertGapFree(carol);
  });

  await step('reloading keeps the session and the room', async () => {
    await alice.page.reload();
    await waitForRoom(alice, 'garden');
    await waitForMessage(alice, 'bob', 'Hi Carol!');
    await send(alice, 'Back after a reload.');
    await waitForMessage(bob, 'alice', 'Back after a reload.');
  });

  await step('a dropped connection says “reconnecting…”, then resumes with no gap and no duplicate', async () => {
    await carol.allow(NET_DOWN, async () => {
      net2.cut();
      await until('carol to show “reconnecting…”', async () =>
        (await carol.page.locator('#connection').textContent()) === 'reconnecting…');
      // Sent by others while carol is away...
      await send(alice, 'Carol, are you there?');
      await send(bob, 'She will see this when she is back.');
      await waitForMessage(alice, 'bob', 'She will see this when she is back.');
      // ...and by carol herself: it waits in her outbox.
      await send(carol, 'Typed while offline.');
      await until('carol’s message to wait as “sending…”', async () =>
        (await carol.page.locator('#outbox .status').allTextContents()).includes('sending…'));
      await shot(carol, 'demo-reconnecting.png');
      // Let a few reconnection attempts fail before the network comes back.
      await new Promise((r) => setTimeout(r, 1500));
      net2.restore();
      await until('carol to be connected again', async () =>
        (await carol.page.locator('#connection').textContent()) === 'connected', 30_000);
    });
    await waitForMessage(carol, 'alice', 'Carol, are you there?');
    await waitForMessage(carol, 'bob', 'She will see this when she is back.');
    await waitForMessage(carol, 'carol', 'Typed while offline.');
    await waitForMessage(alice, 'carol', 'Typed while offline.');
    await until('carol’s outbox to empty', async () => (await carol.page.locator('#outbox > li').count()) === 0);
    // Live again, and still exactly once.
    await send(alice, 'Welcome back.');
    await waitForMessage(carol, 'alice', 'Welcome back.');
    await assertGapFree(carol);
    const bodies = (await messages(carol)).map((m) => m.body);
    assert.equal(new Set(bodies).size, bodies.length, 'no message is shown twice');
    assert.equal(await carol.page.locator('#room-error').isVisible(), false, 'the resume raised no error');
  });

  // ---- Protocol v1.1 in the page: rooms, invites, DMs, typing, presence, reads, edits, moderation ----

  await step('alice creates a private room from the sidebar: its name heads the page and the room list', async () => {
    await field(alice, 'Room name').fill('Book Club');
    await alice.page.getByLabel('Private: invited people only').check();
    await alice.page.getByRole('button', { name: 'Create room', exact: true }).click();
    await waitForRoom(alice, 'book-club', 'Book Club');
    assert.equal(await alice.page.locator('#room-alias').textContent(), '#book-club', 'the local address, without the server');
    await until('Book Club in alice’s room list, as the current room', async () =>
      (await roomList(alice)).some((r) => r.name === 'Book Club' && r.current && r.private));
    assert.ok((await roomList(alice)).some((r) => r.name === '#garden'), 'joined rooms are listed by their short alias');
    assert.deepEqual(await members(alice), ['alice']);
    assert.deepEqual(await memberRoles(alice), { alice: 'owner' });
  });

  await step('a refused room name is said next to the form and goes away after a later success', async () => {
    await alice.allow(HTTP_4XX, async () => {
      await field(alice, 'Room name').fill('book club');
      await alice.page.getByRole('button', { name: 'Create room', exact: true }).click();
      await until('the “exists already” refusal', async () =>
        /exists already/.test(await alice.page.locator('#create-error').textContent())
        && alice.page.locator('#create-error').isVisible());
    });
    await field(alice, 'Room name').fill('Seeds');
    await alice.page.getByRole('button', { name: 'Create room', exact: true }).click();
    await waitForRoom(alice, 'seeds', 'Seeds');
    assert.equal(await alice.page.locator('#create-error').isVisible(), false, 'the old refusal is gone');
    // Back to Book Club through the sidebar.
    await clickRoom(alice, 'Book Club');
    await waitForRoom(alice, 'book-club', 'Book Club');
  });

  await step('bob cannot join the private room uninvited; the refusal clears once he sends again', async () => {
    // An invalid name is refused by the page itself: no request, so nothing in the console.
    await field(bob, 'Room').fill('no such room!');
    await bob.page.getByRole('button', { name: 'Join', exact: true }).click();
    await until('bob’s “Room names are” error', async () =>
      /Room names are/.test(await bob.page.locator('#room-error').textContent()));
    // Refused over the socket: shown in words, and nothing in the console.
    await field(bob, 'Room').fill('book-club');
    await bob.page.getByRole('button', { name: 'Join', exact: true }).click();
    await until('bob’s “private” refusal', async () =>
      /private: you need an invitation/.test(await bob.page.locator('#room-error').textContent()));
    await waitForRoom(bob, 'garden');
    await send(bob, 'Still here in the garden.');
    await waitForMessage(bob, 'bob', 'Still here in the garden.');
    await until('bob’s refusal to go once his message got through', async () =>
      !(await bob.page.locator('#room-error').isVisible()));
  });

  await step('alice invites bob; bob declines, is invited again and accepts from the sidebar', async () => {
    await inviteUser(alice, 'bob');
    const invite = bob.page.locator('#invite-list li').filter({ hasText: 'Book Club' });
    await invite.waitFor();
    await invite.getByRole('button', { name: 'Decline', exact: true }).click();
    await invite.waitFor({ state: 'detached' });
    await until('alice to see that bob declined', async () =>
      (await timeline(alice)).some((m) => m.body === 'declined the invitation' && m.sender === 'bob'));
    await inviteUser(alice, 'bob');
    await invite.waitFor();
    await shot(bob, 'demo-invite.png');
    await invite.getByRole('button', { name: 'Accept', exact: true }).click();
    await waitForRoom(bob, 'book-club', 'Book Club');
    await waitForMembers(alice, ['alice', 'bob']);
    await waitForMembers(bob, ['alice', 'bob']);
    assert.equal(await bob.page.locator('#invites-box').isVisible(), false, 'no invite is left');
  });

  await step('a topic set by the owner in the room settings shows in both headers at once', async () => {
    assert.equal(await bob.page.getByText('Room settings').isVisible(), false, 'a member has no room settings');
    await alice.page.getByText('Room settings', { exact: true }).click();
    await field(alice, 'Topic').fill('One chapter a week');
    await alice.page.getByRole('button', { name: 'Save', exact: true }).click();
    for (const p of [alice, bob]) {
      await until(`${p.name} to show the topic`, async () =>
        (await p.page.locator('#room-topic').textContent()) === 'One chapter a week');
    }
  });

  await step('“bob is typing…” shows while he types and goes when he sends', async () => {
    await field(bob, 'Message').fill('Which book fir');
    await until('alice to see bob typing', async () =>
      (await alice.page.locator('#typing').textContent()) === 'bob is typing…');
    assert.equal(await bob.page.locator('#typing').textContent(), '', 'nobody sees their own typing');
    await shot(alice, 'demo-typing.png');
    await send(bob, 'Which book first?');
    await waitForMessage(alice, 'bob', 'Which book first?');
    await until('the typing line to clear', async () => (await alice.page.locator('#typing').textContent()) === '');
  });

  await step('online dots: a member who closes the page goes offline in the list', async () => {
    for (const who of ['alice', 'bob']) assert.equal(await presenceOf(alice, who), 'online');
    const dave = await person(browser, 'dave');
    await signUp(dave, 'dave', 'silver otter 64');
    await joinRoom(dave, 'garden');
    await joinRoom(alice, 'garden');
    await until('alice to see dave online', async () => (await presenceOf(alice, 'dave')) === 'online');
    await dave.context.close();
    await until('alice to see dave offline', async () => (await presenceOf(alice, 'dave')) === 'offline');
    await clickRoom(alice, 'Book Club');
    await waitForRoom(alice, 'book-club', 'Book Club');
  });

  await step('unread badges count others’ messages in rooms not on screen, and clear when read', async () => {
    await clickRoom(bob, '#garden');
    await waitForRoom(bob, 'garden');
    await send(alice, 'Chapter one by Friday.');
    await send(alice, 'And bring tea.');
    await until('bob’s badge for Book Club to say 2', async () =>
      (await roomList(bob)).find((r) => r.name === 'Book Club')?.badge === '2');
    await shot(bob, 'demo-unread.png');
    assert.equal((await roomList(alice)).find((r) => r.name === 'Book Club').badge, '', 'one’s own messages are not unread');
    await clickRoom(bob, 'Book Club');
    await waitForRoom(bob, 'book-club', 'Book Club');
    await waitForMessage(bob, 'alice', 'And bring tea.');
    // The read marker sits above the first message he had not read.
    const order = await bob.page.locator('#messages > li').evaluateAll((lis) => lis.map((li) =>
      (li.classList.contains('read-marker') ? `marker: ${li.textContent}` : li.querySelector('.body').textContent)));
    assert.deepEqual(order.slice(-3), ['marker: New messages', 'Chapter one by Friday.', 'And bring tea.']);
    await until('bob’s badge to clear', async () =>
      (await roomList(bob)).find((r) => r.name === 'Book Club')?.badge === '');
    await until('alice to see that bob read it', async () =>
      (await alice.page.locator('#seen').textContent()) === 'Seen by bob');
    // The mark is the server's: another room on screen and a reload still show no badge.
    await clickRoom(bob, '#garden');
    await waitForRoom(bob, 'garden');
    await bob.page.reload();
    await waitForRoom(bob, 'garden');
    await until('bob’s list after the reload', async () => (await roomList(bob)).some((r) => r.name === 'Book Club'));
    assert.equal((await roomList(bob)).find((r) => r.name === 'Book Club').badge, '', 'still read after a reload');
    await clickRoom(bob, 'Book Club');
    await waitForRoom(bob, 'book-club', 'Book Club');
  });

  await step('consecutive messages of one sender share one heading', async () => {
    const lis = await alice.page.locator('#messages > li.message').evaluateAll((all) => all.map((li) => ({
      body: li.querySelector('.body').textContent,
      headed: getComputedStyle(li.querySelector('.meta')).display !== 'none',
    })));
    const friday = lis.findIndex((m) => m.body === 'Chapter one by Friday.');
    assert.deepEqual(lis.slice(friday, friday + 2), [
      { body: 'Chapter one by Friday.', headed: true },
      { body: 'And bring tea.', headed: false },
    ]);
  });

  await step('alice edits her message inline: everyone sees the new text once, marked edited', async () => {
    const mine = alice.page.locator('#messages > li.message').filter({ hasText: 'Chapter one by Friday.' });
    await mine.hover();
    await mine.getByRole('button', { name: 'Edit this message' }).click();
    const input = alice.page.getByLabel('New text of the message');
    await input.fill('Chapter one by Saturday.');
    await input.press('Enter');
    for (const p of [alice, bob]) {
      await waitForMessage(p, 'alice', 'Chapter one by Saturday.');
      const edited = p.page.locator('#messages > li.message').filter({ hasText: 'Chapter one by Saturday.' }).locator('.edited');
      await until(`${p.name} to mark it edited`, () => edited.isVisible());
      assert.ok(!(await messages(p)).some((m) => m.body === 'Chapter one by Friday.'), `${p.name}: the old text is gone`);
    }
    assert.equal(await bob.page.locator('#messages > li.message').filter({ hasText: 'And bring tea.' })
      .getByRole('button', { name: 'Edit this message' }).count(), 0, 'bob has no Edit on alice’s messages');
    await bob.page.reload();
    await waitForRoom(bob, 'book-club', 'Book Club');
    await waitForMessage(bob, 'alice', 'Chapter one by Saturday.');
  });

  await step('alice deletes her message: everyone sees it deleted, also after a reload', async () => {
    await send(alice, 'Wrong room, sorry.');
    for (const p of [alice, bob]) await waitForMessage(p, 'alice', 'Wrong room, sorry.');
    const mine = alice.page.locator('#messages > li.message').filter({ hasText: 'Wrong room, sorry.' });
    assert.equal(await bob.page.locator('#messages > li.message').filter({ hasText: 'Wrong room, sorry.' })
      .getByRole('button', { name: 'Delete this message' }).count(), 0, 'bob has no Delete on alice’s messages');
    await mine.hover();
    await mine.getByRole('button', { name: 'Delete this message' }).click();
    await mine.getByRole('button', { name: 'Really delete this message' }).click();
    for (const p of [alice, bob]) {
      await until(`${p.name} to show the message deleted`, async () => {
        const shown = await messages(p);
        return !shown.some((m) => m.body === 'Wrong room, sorry.') && shown.some((m) => m.body === 'Message deleted');
      });
    }
    await bob.page.reload();
    await waitForRoom(bob, 'book-club', 'Book Club');
    await waitForMessage(bob, 'alice', 'Chapter one by Saturday.');
    const after = await messages(bob);
    assert.ok(!after.some((m) => m.body === 'Wrong room, sorry.'), 'the text is gone after a reload');
    assert.ok(after.some((m) => m.body === 'Message deleted' && m.sender === 'alice'), 'the deleted message keeps its place');
  });

  await step('a direct message: carol writes to alice, who accepts from her invites', async () => {
    await carol.allow(HTTP_4XX, async () => {
      await field(carol, 'Person').fill('nobody-here');
      await carol.page.getByRole('button', { name: 'Start chat', exact: true }).click();
      await until('carol’s “no such user”', async () =>
        /no such user/.test(await carol.page.locator('#dm-error').textContent()));
    });
    await field(carol, 'Person').fill('alice');
    await carol.page.getByRole('button', { name: 'Start chat', exact: true }).click();
    await until('carol’s DM titled “alice”', async () => (await carol.page.locator('#room-title').textContent()) === 'alice');
    assert.equal(await carol.page.locator('#dm-error').isVisible(), false);
    const invite = alice.page.locator('#invite-list li').filter({ hasText: 'Direct chat' });
    await invite.waitFor();
    await invite.getByRole('button', { name: 'Accept', exact: true }).click();
    await until('alice’s DM titled “carol”', async () => (await alice.page.locator('#room-title').textContent()) === 'carol');
    // A DM is a private room: alice reads it from her join on.
    await send(carol, 'Psst, alice.');
    await waitForMessage(alice, 'carol', 'Psst, alice.');
    await waitForMessage(carol, 'carol', 'Psst, alice.');
    await until('the DM in alice’s list as “carol”', async () => (await roomList(alice)).some((r) => r.name === 'carol'));
    await clickRoom(alice, 'Book Club');
    await waitForRoom(alice, 'book-club', 'Book Club');
  });

  await step('moderation: the owner makes bob moderator, bob kicks carol, alice bans her', async () => {
    assert.equal(await alice.page.getByRole('button', { name: 'Kick bob' }).count(), 1, 'the owner may kick bob');
    assert.equal(await bob.page.getByRole('button', { name: 'Kick alice' }).count(), 0, 'a member may not kick');
    await alice.page.getByLabel('Role of bob').selectOption('moderator');
    await until('bob to show as moderator', async () => (await memberRoles(bob)).bob === 'moderator');
    await inviteUser(alice, 'carol');
    const invite = carol.page.locator('#invite-list li').filter({ hasText: 'Book Club' });
    await invite.waitFor();
    await invite.getByRole('button', { name: 'Accept', exact: true }).click();
    await waitForRoom(carol, 'book-club', 'Book Club');
    await waitForMembers(bob, ['alice', 'bob', 'carol']);
    assert.equal(await bob.page.getByRole('button', { name: 'Kick alice' }).count(), 0, 'a moderator may not kick the owner');
    await shot(bob, 'demo-moderation.png');
    // Carol's page may have a request on its way when she is removed: its 403 is expected.
    const HTTP_403 = /^Failed to load resource: the server responded with a status of 403\b/;
    await carol.allow(HTTP_403, async () => {
      await bob.page.getByRole('button', { name: 'Kick carol' }).click();
      await until('carol to be told', async () =>
        (await carol.page.locator('#room-error').textContent()) === 'bob removed you from this room.');
    });
    await waitForMembers(alice, ['alice', 'bob']);
    await until('Book Club to leave carol’s list', async () =>
      !(await roomList(carol)).some((r) => r.name === 'Book Club'));
    // Invited back, then banned by the owner: a ban keeps her out, in words.
    await inviteUser(alice, 'carol');
    await invite.waitFor();
    await invite.getByRole('button', { name: 'Accept', exact: true }).click();
    await waitForRoom(carol, 'book-club', 'Book Club');
    await carol.allow(HTTP_403, async () => {
      await alice.page.getByRole('button', { name: 'Ban carol' }).click();
      await until('carol to be told of the ban', async () =>
        (await carol.page.locator('#room-error').textContent()) === 'alice banned you from this room.');
    });
    await field(carol, 'Room').fill('book-club');
    await carol.page.getByRole('button', { name: 'Join', exact: true }).click();
    await until('carol’s “Banned” refusal', async () =>
      /^Banned/.test(await carol.page.locator('#room-error').textContent()));
    // The ban line offers moderators an Unban.
    await until('bob’s Unban', () => bob.page.getByRole('button', { name: 'Unban carol' }).isVisible());
    await alice.page.getByRole('button', { name: 'Unban carol' }).click();
    await until('the unban in alice’s timeline', async () =>
      (await timeline(alice)).some((m) => m.sender === 'alice' && m.body === 'unbanned carol'));
  });

  await step('a moderator deletes someone else’s message; a member cannot', async () => {
    await send(alice, 'Spoiler: the butler did it.');
    for (const p of [alice, bob]) await waitForMessage(p, 'alice', 'Spoiler: the butler did it.');
    const spoiler = (p) => p.page.locator('#messages > li.message').filter({ hasText: 'Spoiler: the butler did it.' });
    // Bob is a moderator now (the step before): Delete shows on alice's message.
    await spoiler(bob).hover();
    await spoiler(bob).getByRole('button', { name: 'Delete this message' }).click();
    await spoiler(bob).getByRole('button', { name: 'Really delete this message' }).click();
    for (const p of [alice, bob]) {
      await until(`${p.name} to show the spoiler deleted`, async () =>
        !(await messages(p)).some((m) => m.body === 'Spoiler: the butler did it.'));
    }
    // Back to member: the Delete on others' messages goes with the role.
    await alice.page.getByLabel('Role of bob').selectOption('member');
    await until('bob to show as member', async () => (await memberRoles(bob)).bob === undefined);
    await send(alice, 'Chapter two next week.');
    await waitForMessage(bob, 'alice', 'Chapter two next week.');
    const next = bob.page.locator('#messages > li.message').filter({ hasText: 'Chapter two next week.' });
    await next.hover();
    assert.equal(await next.getByRole('button', { name: 'Delete this message' }).count(), 0,
      'a member has no Delete on others’ messages');
  });

  await step('leaving: the last owner is told to hand over first; a member just leaves', async () => {
    await alice.page.getByRole('button', { name: 'Leave room', exact: true }).click();
    await until('alice’s “last owner” refusal', async () =>
      /last owner/.test(await alice.page.locator('#room-error').textContent()));
    await bob.page.getByRole('button', { name: 'Leave room', exact: true }).click();
    await until('bob to be elsewhere', async () => (await bob.page.locator('#room-title').textContent()) !== 'Book Club');
    await until('Book Club to leave bob’s list', async () => !(await roomList(bob)).some((r) => r.name === 'Book Club'));
    await waitForMembers(alice, ['alice']);
    await joinRoom(carol, 'garden');
    await joinRoom(alice, 'garden');
    await joinRoom(bob, 'garden');
  });

  await step('log out returns to the login form and forgets the session', async () => {
    await alice.page.getByRole('button', { name: 'Log out', exact: true }).click();
    await heading(alice, 'Log in').waitFor();
    assert.match(await alice.page.locator('#login-notice').textContent(), /logged out/i);
    assert.equal(await alice.page.locator('#chat-view').isVisible(), false);
    await alice.page.reload();
    await heading(alice, 'Log in').waitFor();
    assert.equal(await alice.page.locator('#chat-view').isVisible(), false, 'a reload after logout stays logged out');
    // And the server agrees: the old session is over, a new login works.
    await logIn(alice, 'alice', pw.alice);
  });

  await step('a long history pages back with “Show earlier messages”', async () => {
    const { access_token: token } = await http(base, 'POST', '/login', { body: { username: 'bob', password: pw.bob } });
    await http(base, 'POST', '/rooms/archive/join', { token });
    for (let i = 1; i <= 60; i += 1) {
      await http(base, 'PUT', `/rooms/archive/send/old-${i}`, { token, body: { body: `archived ${i}` } });
    }
    await joinRoom(alice, 'archive');
    const first = await messages(alice);
    assert.equal(first.length, 49, 'joining shows the last 50 events (49 messages and alice’s join)');
    assert.equal(first[0].body, 'archived 12');
    await alice.page.getByRole('button', { name: 'Show earlier messages', exact: true }).click();
    await until('the earlier messages', async () => (await messages(alice)).length === 60);
    assert.equal((await messages(alice))[0].body, 'archived 1');
    await until('the button to go once everything is shown', async () =>
      !(await alice.page.getByRole('button', { name: 'Show earlier messages' }).isVisible()));
    await assertGapFree(alice);
    assert.equal((await timeline(alice))[0].seq, 1);
  });

  await step('a message the server refuses stays in the outbox with the reason, until dismissed', async () => {
    await send(alice, 'x'.repeat(16_385));
    const failed = alice.page.locator('#outbox > li.failed');
    await failed.waitFor();
    assert.match(await failed.locator('.status').textContent(), /^Not sent: .*too long/);
    await failed.getByRole('button', { name: 'Dismiss' }).click();
    await until('the outbox to empty', async () => (await alice.page.locator('#outbox > li').count()) === 0);
    assert.equal((await messages(alice)).length, 60, 'nothing was stored');
  });

  await step('events the server no longer keeps are reported as a gap, not skipped silently', async () => {
    // This server keeps only the last 5 events of a room (--retention 5).
    const dana = await person(browser, 'dana', { url: net3.url });
    const erin = await person(browser, 'erin', { url: retentionBase });
    await signUp(dana, 'dana', 'amber meadow 31');
    await signUp(erin, 'erin', 'velvet compass 8');
    await send(erin, 'Before the cut.');
    await waitForMessage(dana, 'erin', 'Before the cut.');
    await dana.allow(NET_DOWN, async () => {
      net3.cut();
      await until('dana to show “reconnecting…”', async () =>
        (await dana.page.locator('#connection').textContent()) === 'reconnecting…');
      for (let i = 1; i <= 8; i += 1) await send(erin, `While dana is away ${i}`);
      await waitForMessage(erin, 'erin', 'While dana is away 8');
      net3.restore();
      await until('dana to be connected again', async () =>
        (await dana.page.locator('#connection').textContent()) === 'connected', 30_000);
    });
    const notice = dana.page.locator('#messages > li.gap');
    await notice.waitFor();
    assert.equal(await notice.textContent(), '3 earlier events could not be shown: the server no longer keeps them.');
    for (let i = 4; i <= 8; i += 1) await waitForMessage(dana, 'erin', `While dana is away ${i}`);
    const bodies = (await messages(dana)).map((m) => m.body);
    assert.deepEqual(bodies.slice(-6), ['Before the cut.', ...[4, 5, 6, 7, 8].map((i) => `While dana is away ${i}`)]);
    // The notice sits where the missing events would have been.
    const order = await dana.page.locator('#messages > li').evaluateAll((lis) =>
      lis.map((li) => (li.classList.contains('gap') ? 'gap' : li.querySelector('.body').textContent)));
    assert.deepEqual(order.slice(-7), ['Before the cut.', 'gap', ...[4, 5, 6, 7, 8].map((i) => `While dana is away ${i}`)]);
    await shot(dana, 'demo-gap.png');
    // Live again after the gap.
    await send(erin, 'After the gap.');
    await waitForMessage(dana, 'erin', 'After the gap.');
    await waitForMembers(dana, ['dana', 'erin']);
    await dana.context.close();
    await erin.context.close();
  });

  await step('a session revoked elsewhere (log out everywhere) returns the page to the login form', async () => {
    const { access_token: token } = await http(base, 'POST', '/login', { body: { username: 'alice', password: pw.alice } });
    await alice.allow(HTTP_401, async () => {
      await http(base, 'POST', '/logout/all', { token, body: {} });
      await heading(alice, 'Log in').waitFor();
    });
    assert.match(await alice.page.locator('#login-notice').textContent(), /session has ended/i);
    assert.equal(await field(alice, 'Username').inputValue(), 'alice');
  });

  await step('no JavaScript errors on any page', async () => {
    assert.deepEqual(problems, []);
  });
} catch (err) {
  failed = true;
  console.error(err.stack || err);
  if (problems.length) console.error('page problems:\n  ' + problems.join('\n  '));
} finally {
  await browser.close().catch(() => {});
  net2.close();
  net3.close();
  clearTimeout(watchdog);
}

console.log(failed ? `FAIL after ${stepNo} steps` : `ok: ${stepNo} steps passed`);
process.exit(failed ? 1 : 0);
