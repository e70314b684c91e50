// Parlor demo client.
//
// This file is a complete Parlor client in plain browser JavaScript, written to
// be read: a third-party client needs the same few pieces, whatever it is
// written in. It speaks only the public protocol (spec/protocol.md):
//
//   * HTTP JSON under /_parlor/client/v1 for accounts, joining rooms, history
//     and members (section `HTTP` below);
//   * one WebSocket (subprotocol "parlor.v1") for live events and sends, with
//     reconnection and gap-free resume (`LiveConnection` and `Live events`).
//
// The rule that makes resume exact: remember the cursor {epoch, seq} of the
// last event shown, and subscribe with `since` set to it. The server then sends
// every later event exactly once, or a `gap` frame saying what cannot be sent.
//
// Security: everything that came from the network is put on the page with
// textContent, never innerHTML, so a message like "<script>…" stays text. The
// server's Content-Security-Policy forbids inline script and style anyway; this
// file therefore styles only through classes and the `hidden` attribute.

const API = '/_parlor/client/v1';
const DEFAULT_ROOM = 'lobby';
const HISTORY_PAGE = 50;
// sessionStorage is per tab: a reload keeps the session, another tab can log
// in as someone else, and closing the tab forgets the token.
const SESSION_KEY = 'parlor.session';

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/** An error answer from the server, or `network` when it could not be reached. */
class ApiError extends Error {
  constructor(status, errcode, message, retryAfterMs) {
    super(message);
    this.status = status;
    this.errcode = errcode;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * Calls one client API endpoint and returns the parsed JSON answer.
 * Every error answer is `{errcode, error}` (spec §3), thrown as ApiError.
 */
async function api(method, path, { body, token } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(API + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, 'network', 'The server cannot be reached. Check the connection and try again.');
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    // Not JSON (a proxy's error page, say): the status alone has to do.
  }
  if (!res.ok) {
    throw new ApiError(
      res.status,
      data?.errcode ?? 'unknown',
      data?.error ?? `The server answered ${res.status}.`,
      data?.retry_after_ms,
    );
  }
  return data;
}

/** `{room}` path parameters may be ids (`!…`) or aliases (`#…`): always encode. */
const enc = encodeURIComponent;

/** Words for the errcodes a person can do something about; others use the server's text. */
function describeError(err) {
  switch (err.errcode) {
    case 'password_too_short': return 'This password is too short: use at least 8 characters.';
    case 'password_too_long': return 'This password is too long: use at most 1,024 bytes.';
    case 'password_too_common': return 'This password is too common: choose one that is harder to guess.';
    case 'password_entirely_numeric': return 'This password is all digits: add some letters or symbols.';
    case 'password_too_similar': return 'This password is too similar to the username.';
    case 'username_taken': return 'This username is taken: choose another one.';
    case 'invalid_username': return 'Usernames are 1–32 characters: letters a–z, digits, “.”, “_” or “-”.';
    case 'invalid_credentials': return 'Wrong username or password.';
    case 'user_deactivated': return 'This account has been deactivated by the server operator.';
    case 'registration_closed': return 'This server takes no new accounts.';
    case 'registration_token_required': return 'This server needs a registration token: ask its operator for one.';
    case 'invalid_registration_token': return 'This registration token is not valid.';
    case 'registration_token_used_up': return 'This registration token has been used up.';
    case 'registration_token_expired': return 'This registration token has expired.';
    case 'invalid_room': return 'Room names are 1–64 characters: letters a–z, digits, “.”, “_” or “-”.';
    case 'room_not_found': return 'There is no such room.';
    case 'not_member': return 'You are not a member of this room.';
    case 'message_too_large': return 'This message is too long (at most 16,384 bytes).';
    case 'home_server_unreachable': return "The room's home server cannot be reached: the room is read-only for now.";
    case 'storage_unavailable': return 'The server cannot store messages right now: try again shortly.';
    case 'rate_limited': {
      const s = Math.max(1, Math.ceil((err.retryAfterMs ?? 1000) / 1000));
      return `Too many attempts: try again in ${s} second${s === 1 ? '' : 's'}.`;
    }
    default: return err.message;
  }
}

// ---------------------------------------------------------------------------
// LiveConnection: one WebSocket, authenticated, reconnected with backoff
// ---------------------------------------------------------------------------

/**
 * Owns the WebSocket. It knows nothing about rooms: after every (re)connection
 * it calls `onReady`, where the app subscribes again with its cursors.
 *
 * handlers: onReady(readyFrame), onFrame(frame), onState('connecting' |
 * 'connected' | 'reconnecting'), onRevoked() when the token is no longer valid.
 */
class LiveConnection {
  constructor(token, handlers) {
    this.token = token;
    this.handlers = handlers;
    this.ws = null;
    this.ready = false;
    this.stopped = false;
    this.attempt = 0; // failed attempts since the last `ready`: drives the backoff
    this.generation = 0; // which socket a `sent` mark belongs to (see the outbox)
    this.retryTimer = null;
    this.heartbeatTimer = null;
    this.lastFrameAt = 0;
    this.onOnline = () => this.reconnectNow();
  }

  start() {
    window.addEventListener('online', this.onOnline);
    this.connect();
  }

  /** Closes for good (logout): no reconnection. */
  stop() {
    this.stopped = true;
    window.removeEventListener('online', this.onOnline);
    clearTimeout(this.retryTimer);
    this.discardSocket(1000, 'bye');
  }

  /** Sends a frame when authenticated; false when it could not (the caller keeps it for later). */
  send(frame) {
    if (!this.ready) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  connect() {
    if (this.stopped) return;
    this.handlers.onState(this.attempt === 0 ? 'connecting' : 'reconnecting');
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // Browsers cannot set an Authorization header on a WebSocket, so the token
    // goes in the first frame instead (spec §8, Authentication).
    const ws = new WebSocket(`${scheme}//${location.host}${API}/ws`, 'parlor.v1');
    this.ws = ws;
    this.generation += 1;
    ws.onopen = () => {
      this.lastFrameAt = Date.now();
      ws.send(JSON.stringify({ type: 'auth', token: this.token }));
    };
    ws.onmessage = (msg) => {
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch {
        return; // the server only sends JSON; ignore anything else rather than crash
      }
      if (frame.type === 'ready') {
        this.ready = true;
        this.attempt = 0;
        this.startHeartbeat();
        this.handlers.onState('connected');
        this.handlers.onReady(frame);
      } else if (frame.type !== 'pong') {
        this.handlers.onFrame(frame);
      }
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return; // a socket we already gave up on
      this.socketLost(ev.code);
    };
    // `error` is always followed by `close`, which does the work.
    ws.onerror = () => {};
  }

  /** The socket is gone: decide between logging out and reconnecting. */
  socketLost(code) {
    this.discardSocket();
    if (this.stopped) return;
    if (code === 4001) {
      // Bad or revoked token (logged out elsewhere): reconnecting cannot help.
      this.stopped = true;
      this.handlers.onRevoked();
      return;
    }
    // Everything else (network drop, server restart 1001, heartbeat 4003,
    // slow consumer 4008, …) is worth retrying: exponential backoff with
    // jitter, so a restarted server is not hit by every client at once.
    this.attempt += 1;
    this.handlers.onState('reconnecting');
    const ceiling = Math.min(15000, 500 * 2 ** (this.attempt - 1));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Skips the remaining backoff (the browser says it is back online). */
  reconnectNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  discardSocket(code, reason) {
    this.ready = false;
    clearInterval(this.heartbeatTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
        ws.close(code ?? 1000, reason);
      }
    }
  }

  /**
   * The server pings every 30 s and the browser answers by itself, which keeps
   * the server's side honest. This is the client's side: a connection that
   * died without a close (a laptop lid, a lost Wi-Fi) shows up as silence.
   */
  startHeartbeat() {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => {
      const silent = Date.now() - this.lastFrameAt;
      if (silent > 45000) {
        this.socketLost(1006);
      } else if (silent > 20000) {
        this.send({ type: 'ping' });
      }
    }, 5000);
  }
}

// ---------------------------------------------------------------------------
// Page elements and small view helpers
// ---------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const el = {
  loginView: $('login-view'), loginForm: $('login-form'), loginUser: $('login-username'),
  loginPass: $('login-password'), loginError: $('login-error'), loginNotice: $('login-notice'),
  registerView: $('register-view'), registerForm: $('register-form'), registerUser: $('register-username'),
  registerPass: $('register-password'), registerConfirm: $('register-confirm'), registerError: $('register-error'),
  registerTokenField: $('register-token-field'), registerToken: $('register-token'),
  chatView: $('chat-view'), whoami: $('whoami'), logout: $('logout'),
  roomTitle: $('room-title'), connection: $('connection'), joinForm: $('join-form'), joinRoom: $('join-room'),
  roomError: $('room-error'), scroller: $('scroller'), loadOlder: $('load-older'), messages: $('messages'),
  outbox: $('outbox'), sendForm: $('send-form'), message: $('message'), members: $('members'),
  memberCount: $('member-count'), messageTemplate: $('message-template'),
};

function showView(name) {
  el.loginView.hidden = name !== 'login';
  el.registerView.hidden = name !== 'register';
  el.chatView.hidden = name !== 'chat';
  el.whoami.hidden = el.logout.hidden = name !== 'chat';
}

/** Shows (or with null, hides) an error paragraph; marks `field` invalid and focuses it. */
function showError(p, text, field) {
  p.textContent = text ?? '';
  p.hidden = !text;
  for (const input of p.closest('form, section').querySelectorAll('input')) {
    input.removeAttribute('aria-invalid');
  }
  if (text && field) {
    field.setAttribute('aria-invalid', 'true');
    field.setAttribute('aria-errormessage', p.id);
    field.focus();
  }
}

function showNotice(text) {
  el.loginNotice.textContent = text ?? '';
  el.loginNotice.hidden = !text;
}

/** Disables a form's controls while its request is in flight (no double submits). */
async function busy(form, work) {
  const controls = form.querySelectorAll('input, button');
  for (const c of controls) c.disabled = true;
  try {
    return await work();
  } finally {
    for (const c of controls) c.disabled = false;
  }
}

// ---------------------------------------------------------------------------
// Session (per tab)
// ---------------------------------------------------------------------------

let session = null; // {user_id, device_id, access_token, room}

function loadSession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY));
  } catch {
    return null;
  }
}

function saveSession() {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

function clearSession() {
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
}

/** `@ann:b.example` → `ann` for people on our own server; the full id for others. */
function displayName(userId) {
  const ownServer = session ? session.user_id.slice(session.user_id.indexOf(':') + 1) : '';
  const colon = userId.indexOf(':');
  if (colon > 0 && userId.slice(colon + 1) === ownServer) return userId.slice(1, colon);
  return userId;
}

// ---------------------------------------------------------------------------
// Register, log in, log out
// ---------------------------------------------------------------------------

function showLogin({ notice, username } = {}) {
  showView('login');
  showNotice(notice);
  showError(el.loginError, null);
  el.loginPass.value = '';
  if (username !== undefined) el.loginUser.value = username;
  (el.loginUser.value ? el.loginPass : el.loginUser).focus();
}

function showRegister() {
  showView('register');
  showError(el.registerError, null);
  el.registerUser.focus();
  // The token field only when this server asks for one (spec §5, versions).
  fetch('/_parlor/versions', { cache: 'no-store' }).then((r) => r.json()).then((v) => {
    el.registerTokenField.hidden = v.registration !== 'token';
    el.registerToken.required = v.registration === 'token';
  }, () => {});
}

el.registerForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const username = el.registerUser.value.trim();
  const password = el.registerPass.value;
  if (!username) return showError(el.registerError, 'Enter a username.', el.registerUser);
  if (!password) return showError(el.registerError, 'Enter a password.', el.registerPass);
  if (password !== el.registerConfirm.value) {
    return showError(el.registerError, 'The passwords differ: type the same password twice.', el.registerConfirm);
  }
  const body = { username, password };
  if (!el.registerTokenField.hidden) {
    const token = el.registerToken.value.trim();
    if (!token) return showError(el.registerError, 'Enter your registration token.', el.registerToken);
    body.registration_token = token;
  }
  showError(el.registerError, null);
  try {
    const res = await busy(el.registerForm, () => api('POST', '/register', { body }));
    el.registerForm.reset();
    // As in the original app: registering does not log in; the login form
    // follows, with the new username filled in.
    showLogin({ notice: `Account ${res.user_id} created. Log in to start chatting.`, username });
  } catch (err) {
    const onUsername = ['username_taken', 'invalid_username'].includes(err.errcode);
    const onToken = err.errcode?.includes('registration_token');
    showError(el.registerError, describeError(err),
      onUsername ? el.registerUser : onToken && !el.registerTokenField.hidden ? el.registerToken : el.registerPass);
  }
});

el.loginForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const username = el.loginUser.value.trim();
  const password = el.loginPass.value;
  if (!username) return showError(el.loginError, 'Enter your username.', el.loginUser);
  if (!password) return showError(el.loginError, 'Enter your password.', el.loginPass);
  showError(el.loginError, null);
  try {
    const res = await busy(el.loginForm, () =>
      api('POST', '/login', { body: { username, password, device_name: 'Parlor web demo' } }));
    session = { ...res, room: DEFAULT_ROOM };
    saveSession();
    el.loginPass.value = '';
    showNotice(null);
    startChat();
  } catch (err) {
    const text = err.errcode === 'invalid_username' ? describeError({ errcode: 'invalid_credentials' }) : describeError(err);
    showError(el.loginError, text, el.loginPass);
  }
});

el.logout.addEventListener('click', async () => {
  if (!session) return;
  const token = session.access_token;
  // Stop the socket first: the server closes it with 4001 when the token is
  // revoked, and that must not read as "your session ended elsewhere".
  stopChat();
  clearSession();
  let notice = 'You are logged out.';
  try {
    await api('POST', '/logout', { token, body: {} });
  } catch (err) {
    if (err.errcode !== 'unknown_token') notice = `Logged out in this tab, but the server said: ${describeError(err)}`;
  }
  showLogin({ notice });
});

$('to-register').addEventListener('click', showRegister);
$('to-login').addEventListener('click', () => showLogin());

/** The token is not (or no longer) valid: back to the login form. */
function sessionEnded() {
  const username = session ? displayName(session.user_id) : undefined;
  stopChat();
  clearSession();
  showLogin({ notice: 'Your session has ended: log in again.', username });
}

// ---------------------------------------------------------------------------
// Chat: rooms, history, members
// ---------------------------------------------------------------------------

let live = null; // the LiveConnection while logged in
// The room on screen and the cursor of the last event shown in it.
// {room_id, alias, epoch, lastSeq, oldestShownSeq, earliestSeq}
let room = null;
let enterGeneration = 0; // a newer "Join" makes the answers of an older one stale
let entering = false; // an enterRoom() is under way
let subscriptionIds = 0;
const shownEventIds = new Set();

function startChat() {
  showView('chat');
  el.whoami.textContent = session.user_id;
  el.whoami.title = `device ${session.device_id}`;
  live = new LiveConnection(session.access_token, {
    onState: setConnectionState,
    onReady: () => {
      // Entering the room failed earlier (the server was down, say): try again now that it answers.
      if (!room && !entering) enterRoom(session.room || DEFAULT_ROOM);
      subscribe();
      flushOutbox();
    },
    onFrame: handleFrame,
    onRevoked: sessionEnded,
  });
  live.start();
  enterRoom(session.room || DEFAULT_ROOM).then((ok) => ok && el.message.focus());
}

function stopChat() {
  live?.stop();
  live = null;
  room = null;
  enterGeneration += 1;
  entering = false;
  clearTimeout(membersTimer);
  outbox.clear();
  el.messages.replaceChildren();
  el.outbox.replaceChildren();
  el.members.replaceChildren();
  el.memberCount.textContent = '';
  el.roomTitle.textContent = '…';
  el.loadOlder.hidden = true;
  showError(el.roomError, null);
}

function setConnectionState(state) {
  const words = { connecting: 'connecting…', connected: 'connected', reconnecting: 'reconnecting…' };
  el.connection.textContent = words[state];
  el.connection.dataset.state = state;
}

/** An authenticated call; a revoked token ends the session instead of throwing on. */
async function authed(method, path, body) {
  if (!session) throw new ApiError(0, 'logged_out', 'You are logged out.');
  try {
    return await api(method, path, { token: session.access_token, body });
  } catch (err) {
    if (err.errcode === 'unknown_token' || err.errcode === 'missing_token') sessionEnded();
    throw err;
  }
}

/**
 * Switches the view to a room: join it (idempotent), show its last messages,
 * then follow it live from exactly the last one shown. True when it did.
 */
async function enterRoom(name) {
  const gen = ++enterGeneration;
  entering = true;
  showError(el.roomError, null);
  let joined, page, members;
  try {
    joined = await authed('POST', `/rooms/${enc(name)}/join`, {});
    page = await authed('GET', `/rooms/${enc(joined.room_id)}/messages?limit=${HISTORY_PAGE}`);
    members = await authed('GET', `/rooms/${enc(joined.room_id)}/members`);
  } catch (err) {
    if (gen === enterGeneration && session) showError(el.roomError, describeError(err));
    return false;
  } finally {
    if (gen === enterGeneration) entering = false;
  }
  if (gen !== enterGeneration) return false;

  // One subscription at a time; also when re-entering the same room, whose
  // new subscription starts from the history just loaded.
  if (room) live?.send({ type: 'unsubscribe', room: room.room_id });
  const last = page.events.at(-1);
  room = {
    room_id: joined.room_id,
    alias: joined.alias,
    epoch: page.epoch,
    lastSeq: last ? last.seq : page.latest_seq,
    oldestShownSeq: page.events[0]?.seq ?? page.latest_seq + 1,
    earliestSeq: page.earliest_seq,
  };
  session.room = joined.alias;
  saveSession();

  el.roomTitle.textContent = joined.alias;
  document.title = `${joined.alias} · Parlor`;
  shownEventIds.clear();
  el.messages.replaceChildren(...page.events.map(renderEvent));
  updateLoadOlder();
  for (const item of outbox.values()) item.el.hidden = item.room_id !== room.room_id;
  renderMembers(members.members);
  scrollToBottom();
  subscribe();
  return true;
}

/**
 * Asks for the room's events after the cursor. Sent after entering a room and
 * after every reconnection; the server replays what was missed, exactly once.
 */
function subscribe() {
  if (!room || !live) return;
  live.send({
    type: 'subscribe',
    id: `sub-${++subscriptionIds}`,
    room: room.room_id,
    since: { epoch: room.epoch, seq: room.lastSeq },
  });
}

el.joinForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = el.joinRoom.value.trim();
  if (!name) return showError(el.roomError, 'Type the name of a room, e.g. lobby.', el.joinRoom);
  if (await busy(el.joinForm, () => enterRoom(name))) {
    el.joinRoom.value = '';
    el.message.focus();
  } else {
    el.joinRoom.focus();
  }
});

el.loadOlder.addEventListener('click', async () => {
  const r = room;
  let page;
  try {
    page = await authed('GET', `/rooms/${enc(r.room_id)}/messages?before=${r.oldestShownSeq}&limit=${HISTORY_PAGE}`);
  } catch (err) {
    showError(el.roomError, describeError(err));
    return;
  }
  if (r !== room || page.epoch !== r.epoch) return; // another room, or the log was restarted meanwhile
  // Keep the messages in view where they are while older ones go in above.
  const fromBottom = el.scroller.scrollHeight - el.scroller.scrollTop;
  el.messages.prepend(...page.events.filter((ev) => !shownEventIds.has(ev.event_id)).map(renderEvent));
  el.scroller.scrollTop = el.scroller.scrollHeight - fromBottom;
  if (page.events.length) r.oldestShownSeq = page.events[0].seq;
  r.earliestSeq = page.earliest_seq;
  updateLoadOlder();
});

function updateLoadOlder() {
  el.loadOlder.hidden = !room || room.oldestShownSeq <= room.earliestSeq;
}

let membersTimer = null;

/** Join and leave events change the member list; a burst of them (a replay) costs one request. */
function refreshMembersSoon() {
  clearTimeout(membersTimer);
  membersTimer = setTimeout(async () => {
    const r = room;
    if (!r) return;
    try {
      const res = await authed('GET', `/rooms/${enc(r.room_id)}/members`);
      if (r === room) renderMembers(res.members);
    } catch {
      // Not fatal: the list is fetched again after the next join, leave or reconnection.
    }
  }, 150);
}

function renderMembers(members) {
  el.members.replaceChildren(...members.map(({ user_id }) => {
    const li = document.createElement('li');
    li.textContent = displayName(user_id);
    li.title = user_id;
    if (user_id === session.user_id) li.classList.add('me');
    return li;
  }));
  el.memberCount.textContent = `(${members.length})`;
}

// ---------------------------------------------------------------------------
// Live events
// ---------------------------------------------------------------------------

function handleFrame(frame) {
  switch (frame.type) {
    case 'event': return onEvent(frame);
    case 'gap': return onGap(frame);
    case 'ack': return onAck(frame);
    case 'error': return onErrorFrame(frame);
    case 'caught_up':
      // After a (re)subscription: people may have come and gone meanwhile, and
      // a refresh may have failed while the connection was down.
      if (room && frame.room_id === room.room_id) refreshMembersSoon();
      return;
    case 'unsubscribed':
      if (room && frame.room_id === room.room_id && frame.reason === 'left') {
        showError(el.roomError, 'You left this room (from another device): join it again to follow it.');
      }
      return;
    default:
      // joined, left, pong, …: nothing to show. Unknown types are ignored,
      // as the spec asks of clients, so newer servers do not break this one.
  }
}

function onEvent({ room_id, epoch, event }) {
  if (!room || room_id !== room.room_id) return; // a room we switched away from
  // The cursor makes duplicates impossible on a correct server; checking it
  // here as well costs nothing and keeps the screen right regardless.
  if (epoch === room.epoch && event.seq <= room.lastSeq) return;
  room.epoch = epoch;
  room.lastSeq = event.seq;
  const stick = isNearBottom();
  el.messages.append(renderEvent(event));
  settleOutbox(event.event_id);
  if (event.type === 'join' || event.type === 'leave') refreshMembersSoon();
  if (stick) scrollToBottom();
}

/**
 * `gap`: the events after `from` up to `to` will never come (the log was
 * trimmed by retention, or started again under a new epoch). Say so on screen
 * and move the cursor past them, so a later resume does not ask again.
 */
function onGap({ room_id, from, to, reason }) {
  if (!room || room_id !== room.room_id) return;
  const li = document.createElement('li');
  li.className = 'gap';
  if (reason === 'trimmed' && from.epoch === to.epoch) {
    const n = to.seq - from.seq;
    li.textContent = `${n} earlier event${n === 1 ? '' : 's'} could not be shown: the server no longer keeps them.`;
  } else {
    li.textContent = 'The room\'s history was restarted on the server: some messages may be missing here.';
    // Older pages would come from another epoch, where these seqs mean nothing.
    room.oldestShownSeq = room.earliestSeq;
    updateLoadOlder();
  }
  el.messages.append(li);
  room.epoch = to.epoch;
  room.lastSeq = to.seq;
}

function onErrorFrame(frame) {
  const item = frame.id && outbox.get(frame.id);
  if (item) return sendFailed(item, frame);
  showError(el.roomError, describeError({ errcode: frame.errcode, message: frame.error, retryAfterMs: frame.retry_after_ms }));
}

// ---------------------------------------------------------------------------
// Sending: an outbox of messages not yet acknowledged
// ---------------------------------------------------------------------------
//
// Each message gets a txn_id once, when typed. It is sent over the WebSocket
// and sent again with the same txn_id after every reconnection until the
// server acknowledges it: the server stores a txn_id's message only once, so
// a message whose ack was lost in a dropped connection is not doubled.
// The message shows in the outbox ("sending…") until its own event arrives.

const outbox = new Map(); // txn_id → {txn_id, room_id, body, el, sentOn, eventId, timer}

/** 128 random bits; crypto.getRandomValues works on plain-http pages too. */
function newTxnId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return 'web-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

el.sendForm.addEventListener('submit', (e) => {
  e.preventDefault(); // Enter in the field submits the form, so Enter sends
  const body = el.message.value;
  if (!body.trim() || !room) return;
  const txn_id = newTxnId();
  const item = { txn_id, room_id: room.room_id, body, sentOn: 0, eventId: null, timer: null };
  item.el = renderPending(item);
  outbox.set(txn_id, item);
  el.outbox.append(item.el);
  el.message.value = '';
  scrollToBottom();
  flushOutbox();
});

/** Sends every outbox message not yet sent on the current socket. */
function flushOutbox() {
  for (const item of outbox.values()) {
    if (item.failed || item.eventId || item.sentOn === live?.generation) continue;
    const frame = { type: 'send', id: item.txn_id, room: item.room_id, txn_id: item.txn_id, body: item.body };
    if (live?.send(frame)) item.sentOn = live.generation;
  }
}

function onAck({ id, event_id }) {
  const item = outbox.get(id);
  if (!item) return;
  item.eventId = event_id;
  // The ack and the event travel separately; whichever comes second settles it.
  // Messages to a room no longer on screen have no event to wait for.
  if (shownEventIds.has(event_id) || !room || item.room_id !== room.room_id) removeFromOutbox(item);
}

function settleOutbox(eventId) {
  for (const item of outbox.values()) {
    if (item.eventId === eventId) removeFromOutbox(item);
  }
}

function removeFromOutbox(item) {
  clearTimeout(item.timer);
  item.el.remove();
  outbox.delete(item.txn_id);
}

function sendFailed(item, frame) {
  if (frame.errcode === 'rate_limited' || frame.errcode === 'storage_unavailable') {
    // Worth another try with the same txn_id, after the wait the server asks for.
    item.sentOn = 0;
    clearTimeout(item.timer);
    item.timer = setTimeout(flushOutbox, frame.retry_after_ms ?? 2000);
    return;
  }
  item.failed = true;
  item.el.classList.add('failed');
  const status = item.el.querySelector('.status');
  status.textContent = `Not sent: ${describeError({ errcode: frame.errcode, message: frame.error })}`;
  const dismiss = document.createElement('button');
  dismiss.type = 'button';
  dismiss.className = 'link';
  dismiss.textContent = 'Dismiss';
  dismiss.addEventListener('click', () => {
    removeFromOutbox(item);
    el.message.focus();
  });
  status.after(dismiss);
}

// ---------------------------------------------------------------------------
// Rendering: textContent only
// ---------------------------------------------------------------------------

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function renderTime(timeEl, ts) {
  const d = new Date(ts);
  const today = new Date().toDateString() === d.toDateString();
  timeEl.dateTime = d.toISOString();
  timeEl.textContent = today ? timeFormat.format(d) : dateTimeFormat.format(d);
  timeEl.title = dateTimeFormat.format(d);
}

/** One room event as a list item: a message, or a line saying who joined or left. */
function renderEvent(event) {
  shownEventIds.add(event.event_id);
  const li = el.messageTemplate.content.firstElementChild.cloneNode(true);
  li.dataset.seq = event.seq;
  const sender = li.querySelector('.sender');
  sender.textContent = displayName(event.sender);
  sender.title = event.sender;
  if (event.sender === session?.user_id) li.classList.add('mine');
  renderTime(li.querySelector('.time'), event.ts);
  const body = li.querySelector('.body');
  if (event.type === 'message') {
    body.textContent = event.body;
  } else {
    li.classList.add('membership');
    body.textContent = event.type === 'join' ? 'joined the room' : event.type === 'leave' ? 'left the room' : event.type;
  }
  return li;
}

function renderPending(item) {
  const li = el.messageTemplate.content.firstElementChild.cloneNode(true);
  li.classList.add('pending', 'mine');
  li.querySelector('.sender').textContent = displayName(session.user_id);
  const status = document.createElement('span');
  status.className = 'status';
  status.textContent = 'sending…';
  li.querySelector('.time').replaceWith(status);
  li.querySelector('.body').textContent = item.body;
  return li;
}

function isNearBottom() {
  const s = el.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
}

function scrollToBottom() {
  el.scroller.scrollTop = el.scroller.scrollHeight;
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

async function boot() {
  session = loadSession();
  if (!session?.access_token) {
    session = null;
    showLogin();
    return;
  }
  // A reload: check that the stored token still works before showing the chat.
  try {
    await authed('GET', '/account/whoami');
  } catch (err) {
    if (session) {
      // Not a token problem (the server is down, say): keep the session and
      // let the chat view retry on its own.
      startChat();
      showError(el.roomError, describeError(err));
    }
    return;
  }
  startChat();
}

boot();
