// Parlor demo client.
//
// This file is a complete Parlor client in plain browser JavaScript, written to
// be read: a third-party client needs the same few pieces, whatever it is
// written in. It speaks only the public protocol (spec/protocol.md):
//
//   * HTTP JSON under /_parlor/client/v1 for accounts, history, members,
//     the room list (`GET /rooms`, polled: it carries invites and unread
//     counts of rooms not on screen) and v1.1's rooms: create, invite,
//     reject, kick, ban, unban, roles, settings, direct messages, edits and
//     deletions (redactions) (section `HTTP` below);
//   * one WebSocket (subprotocol "parlor.v1") for live events and sends, with
//     reconnection and gap-free resume (`LiveConnection` and `Live events`),
//     plus `join`/`leave` while it is up, `typing`, `read`, and the `typing`,
//     `presence` and `receipt` frames the server pushes.
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
    case 'not_invited': return 'This room is private: you need an invitation to join it.';
    case 'banned': return 'Banned from this room: a moderator has to unban first.';
    case 'forbidden': return 'Your role in this room does not allow that.';
    case 'user_not_found': return 'There is no such user on this server.';
    case 'remote_user_unsupported': return 'Rooms and people of other servers cannot take part in this yet.';
    case 'alias_taken': return 'A room with this address exists already.';
    case 'event_not_found': return 'That message is no longer in the room.';
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
  roomTopic: $('room-topic'), roomAlias: $('room-alias'), typing: $('typing'), seen: $('seen'),
  roomList: $('room-list'), inviteList: $('invite-list'), invitesBox: $('invites-box'),
  createForm: $('create-form'), createName: $('create-name'), createPrivate: $('create-private'),
  createError: $('create-error'), dmForm: $('dm-form'), dmUser: $('dm-user'), dmError: $('dm-error'),
  inviteForm: $('invite-form'), inviteUser: $('invite-user'), inviteError: $('invite-error'),
  inviteDone: $('invite-done'), leave: $('leave'), settings: $('settings'), settingsForm: $('settings-form'),
  settingsName: $('settings-name'), settingsTopic: $('settings-topic'), settingsPrivate: $('settings-private'),
  settingsError: $('settings-error'),
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

/** The server name of our own user id: `@ann:b.example` → `b.example`. */
function ownServer() {
  return session ? session.user_id.slice(session.user_id.indexOf(':') + 1) : '';
}

/** `@ann:b.example` → `ann` for people on our own server; the full id for others. */
function displayName(userId) {
  const colon = userId.indexOf(':');
  if (colon > 0 && userId.slice(colon + 1) === ownServer()) return userId.slice(1, colon);
  return userId;
}

/** `#garden:b.example` → `#garden` for rooms of our own server; the full alias for others. */
function shortAlias(alias) {
  const colon = alias.indexOf(':');
  if (colon > 0 && alias.slice(colon + 1) === ownServer()) return alias.slice(0, colon);
  return alias;
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
// {room_id, alias, name, topic, epoch, lastSeq, oldestShownSeq, earliestSeq,
//  readSeq, members, removed}
let room = null;
let enterGeneration = 0; // a newer "Join" makes the answers of an older one stale
let entering = false; // an enterRoom() is under way
let subscriptionIds = 0;
let ephemeralIds = 0; // ids of typing/read frames, whose errors are not worth showing
const shownEventIds = new Set();
// Edits seen in this room: original event_id → {body, seq, id} of the latest edit.
// Kept apart from the screen so an edit met before its original (an older page) still applies.
const edits = new Map();
let roomSummaries = []; // the last GET /rooms answer: joined rooms, then invites
const dmNames = new Map(); // room_id → label of a direct-message room (its other people)
const receipts = new Map(); // user_id → read seq in the room on screen (from `receipt` frames)

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
      refreshRooms();
    },
    onFrame: handleFrame,
    onRevoked: sessionEnded,
  });
  live.start();
  enterRoom(session.room || DEFAULT_ROOM).then((ok) => ok && el.message.focus());
  // Invites and other rooms' unread counts come from GET /rooms: the socket
  // only follows the room on screen, so the list is asked for now and then.
  clearInterval(roomsTimer);
  // A hidden tab skips the polls; becoming visible asks at once.
  roomsTimer = setInterval(() => document.visibilityState === 'visible' && refreshRooms(), ROOMS_POLL_MS);
}

function stopChat() {
  live?.stop();
  live = null;
  room = null;
  enterGeneration += 1;
  entering = false;
  clearTimeout(membersTimer);
  clearInterval(roomsTimer);
  stopTyping();
  outbox.clear();
  roomSummaries = [];
  dmNames.clear();
  el.messages.replaceChildren();
  el.outbox.replaceChildren();
  el.members.replaceChildren();
  el.roomList.replaceChildren();
  el.inviteList.replaceChildren();
  el.invitesBox.hidden = true;
  el.memberCount.textContent = '';
  el.roomTitle.textContent = '…';
  el.roomTopic.hidden = el.roomAlias.hidden = true;
  el.typing.textContent = '';
  el.seen.hidden = true;
  el.loadOlder.hidden = true;
  for (const p of [el.roomError, el.createError, el.dmError, el.inviteError]) showError(p, null);
  el.inviteDone.hidden = true;
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

/** A bare room name the server would refuse: said here, without a request the server must refuse. */
function badRoomName(name) {
  return !/^[#!]/.test(name) && !/^[a-z0-9._-]{1,64}$/.test(name.toLowerCase());
}

/**
 * Switches the view to a room: join it (idempotent), show its last messages,
 * then follow it live from exactly the last one shown. True when it did.
 */
async function enterRoom(name) {
  const gen = ++enterGeneration;
  entering = true;
  showError(el.roomError, null);
  if (badRoomName(name)) {
    entering = false;
    showError(el.roomError, describeError({ errcode: 'invalid_room' }));
    return false;
  }
  let joined, page, members;
  try {
    joined = await wsRequest({ type: 'join', room: name }) ?? await authed('POST', `/rooms/${enc(name)}/join`, {});
    page = await authed('GET', `/rooms/${enc(joined.room_id)}/messages?limit=${HISTORY_PAGE}`);
    members = await authed('GET', `/rooms/${enc(joined.room_id)}/members`);
  } catch (err) {
    if (gen === enterGeneration && session) showError(el.roomError, describeError(err));
    return false;
  } finally {
    if (gen === enterGeneration) entering = false;
  }
  if (gen !== enterGeneration) return false;

  // How much of it is new to us, by the sidebar's last count (before this visit marks it read).
  const unreadBefore = roomSummaries.find((r) => r.room_id === joined.room_id && r.membership === 'join')?.unread ?? 0;

  // One subscription at a time; also when re-entering the same room, whose
  // new subscription starts from the history just loaded.
  stopTyping();
  if (room) live?.send({ type: 'unsubscribe', room: room.room_id });
  const last = page.events.at(-1);
  room = {
    room_id: joined.room_id,
    alias: joined.alias,
    name: undefined,
    topic: undefined,
    visibility: undefined,
    epoch: page.epoch,
    lastSeq: last ? last.seq : page.latest_seq,
    oldestShownSeq: page.events[0]?.seq ?? page.latest_seq + 1,
    earliestSeq: page.earliest_seq,
    readSeq: 0,
    members: members.members,
    membersFresh: true,
    removed: null,
  };
  session.room = joined.alias ?? joined.room_id;
  saveSession();

  shownEventIds.clear();
  edits.clear();
  receipts.clear();
  // What the forms said was about the room we left, or is settled by being here.
  el.inviteDone.hidden = true;
  for (const p of [el.inviteError, el.createError, el.dmError]) showError(p, null);
  el.settings.open = false;
  el.typing.textContent = '';
  // Edits first, so their originals are drawn with the latest text.
  for (const ev of page.events) noteEdit(ev);
  el.messages.replaceChildren(...renderEvents(page.events));
  placeReadMarker(unreadBefore);
  regroup();
  updateLoadOlder();
  for (const item of outbox.values()) item.el.hidden = item.room_id !== room.room_id;
  renderMembers();
  renderSeen();
  updateHeader();
  scrollToBottom();
  subscribe();
  markReadSoon();
  // The sidebar and the header's name and topic follow when the list comes.
  refreshRooms();
  return true;
}

/** Name, topic and address of the room on screen, from GET /rooms and the room's own events. */
function updateHeader() {
  if (!room) return;
  const summary = roomSummaries.find((r) => r.room_id === room.room_id && r.membership === 'join');
  if (summary && room.name === undefined) room.name = summary.name ?? null;
  if (summary && room.topic === undefined) room.topic = summary.topic ?? null;
  if (summary && room.visibility === undefined) room.visibility = summary.visibility;
  const short = room.alias ? shortAlias(room.alias) : null;
  const title = room.name || short || dmLabel(room.room_id);
  el.roomTitle.textContent = title;
  el.roomTitle.title = room.alias ?? room.room_id;
  el.roomTitle.dataset.alias = room.alias ?? '';
  el.roomAlias.textContent = short ?? '';
  el.roomAlias.hidden = !room.name || !short;
  el.roomTopic.textContent = room.topic ?? '';
  el.roomTopic.hidden = !room.topic;
  document.title = `${title} · Parlor`;
  fillSettings();
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
    el.joinRoom.setAttribute('aria-invalid', 'true');
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
  for (const ev of page.events) noteEdit(ev);
  el.messages.prepend(...renderEvents(page.events.filter((ev) => !shownEventIds.has(ev.event_id))));
  regroup();
  el.scroller.scrollTop = el.scroller.scrollHeight - fromBottom;
  if (page.events.length) r.oldestShownSeq = page.events[0].seq;
  r.earliestSeq = page.earliest_seq;
  updateLoadOlder();
});

function updateLoadOlder() {
  el.loadOlder.hidden = !room || room.oldestShownSeq <= room.earliestSeq;
}

let membersTimer = null;

/** Membership and role events change the member list; a burst of them (a replay) costs one request. */
function refreshMembersSoon() {
  clearTimeout(membersTimer);
  membersTimer = setTimeout(async () => {
    const r = room;
    if (!r || r.removed) return;
    try {
      const res = await authed('GET', `/rooms/${enc(r.room_id)}/members`);
      if (r === room) {
        r.members = res.members;
        renderMembers();
      }
    } catch {
      // Not fatal: the list is fetched again after the next join, leave or reconnection.
    }
  }, 150);
}

const RANK = { member: 0, moderator: 1, owner: 2 };

function myRole() {
  return room?.members.find((m) => m.user_id === session.user_id)?.role ?? 'member';
}

function renderMembers() {
  const members = room.members;
  const mine = RANK[myRole()];
  // Unban buttons on `ban` lines, and the room settings, are for moderators and owners.
  el.messages.classList.toggle('can-moderate', mine >= RANK.moderator);
  el.settings.hidden = mine < RANK.moderator;
  el.members.replaceChildren(...members.map((m) => {
    const li = document.createElement('li');
    li.dataset.user = m.user_id;
    const dot = document.createElement('span');
    dot.className = 'presence';
    dot.setAttribute('role', 'img');
    setPresence(dot, m.presence);
    const name = document.createElement('span');
    name.className = 'member-name';
    name.textContent = displayName(m.user_id);
    name.title = m.user_id;
    li.append(dot, name);
    if (m.role && m.role !== 'member') {
      const role = document.createElement('span');
      role.className = 'role';
      role.textContent = m.role;
      li.append(role);
    }
    if (m.user_id === session.user_id) {
      li.classList.add('me');
      return li;
    }
    // Moderators act on lower roles only, and the owner sets roles: the server
    // checks the same, the page just does not offer what would be refused.
    const controls = document.createElement('span');
    controls.className = 'mod-controls';
    if (mine >= RANK.moderator && mine > RANK[m.role ?? 'member']) {
      controls.append(
        modButton('Kick', m.user_id, () => moderate('kick', m.user_id)),
        modButton('Ban', m.user_id, () => moderate('ban', m.user_id)),
      );
    }
    if (mine === RANK.owner) {
      const select = document.createElement('select');
      select.setAttribute('aria-label', `Role of ${displayName(m.user_id)}`);
      for (const r of ['member', 'moderator', 'owner']) select.append(new Option(r, r, false, r === (m.role ?? 'member')));
      select.addEventListener('change', () => setRole(m.user_id, select.value));
      controls.append(select);
    }
    if (controls.childElementCount) li.append(controls);
    return li;
  }));
  el.memberCount.textContent = `(${members.length})`;
}

function setPresence(dot, presence) {
  dot.dataset.presence = presence ?? 'unknown';
  const words = presence === 'online' ? 'online' : presence === 'offline' ? 'offline' : 'presence unknown';
  dot.setAttribute('aria-label', words);
  dot.title = words;
}

function modButton(label, userId, action) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'secondary small';
  b.textContent = label;
  b.setAttribute('aria-label', `${label} ${displayName(userId)}`);
  b.addEventListener('click', action);
  return b;
}

async function moderate(action, userId) {
  const r = room;
  try {
    await authed('POST', `/rooms/${enc(r.room_id)}/${action}`, { user_id: userId });
    showError(el.roomError, null);
  } catch (err) {
    showError(el.roomError, describeError(err));
  }
}

async function setRole(userId, role) {
  const r = room;
  try {
    await authed('PUT', `/rooms/${enc(r.room_id)}/roles/${enc(userId)}`, { role });
    showError(el.roomError, null);
  } catch (err) {
    showError(el.roomError, describeError(err));
    if (r === room) renderMembers(); // put the menu back to the role the member still has
  }
}

el.leave.addEventListener('click', async () => {
  const r = room;
  if (!r) return;
  try {
    await wsRequest({ type: 'leave', room: r.room_id }) ?? await authed('POST', `/rooms/${enc(r.room_id)}/leave`, {});
  } catch (err) {
    // The last owner must hand over first: an expected refusal, said in words.
    const text = err.errcode === 'forbidden'
      ? 'You are the last owner of this room: make another member owner first.'
      : describeError(err);
    showError(el.roomError, text);
    return;
  }
  r.removed = 'You left this room.';
  await refreshRooms();
  const next = roomSummaries.find((x) => x.membership === 'join' && x.room_id !== r.room_id);
  if (room === r) enterRoom(next ? next.room_id : DEFAULT_ROOM);
});

// The settings form shows the room as it is; filled while closed (`toggle`
// fires a moment after opening, when someone may have typed already).
function fillSettings() {
  if (el.settings.open || !room) return;
  el.settingsName.value = room.name ?? '';
  el.settingsTopic.value = room.topic ?? '';
  el.settingsPrivate.checked = room.visibility === 'private';
  showError(el.settingsError, null);
}

el.settings.addEventListener('toggle', fillSettings);

el.settingsForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const r = room;
  if (!r) return;
  // Only what changed; an empty name or topic clears it (spec §12).
  const body = {};
  const name = el.settingsName.value.trim();
  const topic = el.settingsTopic.value.trim();
  const visibility = el.settingsPrivate.checked ? 'private' : 'public';
  if (name !== (r.name ?? '')) body.name = name;
  if (topic !== (r.topic ?? '')) body.topic = topic;
  if (visibility !== (r.visibility ?? 'public')) body.visibility = visibility;
  if (Object.keys(body).length) {
    try {
      await busy(el.settingsForm, () => authed('PATCH', `/rooms/${enc(r.room_id)}`, body));
    } catch (err) {
      return showError(el.settingsError, describeError(err));
    }
  }
  showError(el.settingsError, null);
  el.settings.open = false;
});

// ---------------------------------------------------------------------------
// The room list: joined rooms with unread counts, and pending invites
// ---------------------------------------------------------------------------

const ROOMS_POLL_MS = 3000;
let roomsTimer = null;
let roomsInFlight = null;

let roomsAgain = false; // asked for while a request was out: its answer may predate the change

/**
 * GET /rooms, then redraw the sidebar. Callers during a request share one
 * more request after it, so a room just joined or created is always listed.
 */
function refreshRooms() {
  if (!session) return Promise.resolve();
  if (roomsInFlight) {
    roomsAgain = true;
    return roomsInFlight;
  }
  roomsInFlight = (async () => {
    do {
      roomsAgain = false;
      try {
        const res = await authed('GET', '/rooms');
        roomSummaries = res.rooms;
        await labelDms();
        renderRoomList();
        updateHeader();
      } catch {
        // The next poll tries again; the connection state already says when the server is away.
        break;
      }
    } while (roomsAgain && session);
    roomsInFlight = null;
  })();
  return roomsInFlight;
}

/** Rooms with neither alias nor name (direct messages) are called by their other people. */
async function labelDms() {
  for (const r of roomSummaries) {
    if (r.membership !== 'join' || r.alias || r.name || dmNames.has(r.room_id)) continue;
    try {
      const { members } = await authed('GET', `/rooms/${enc(r.room_id)}/members`);
      const others = members.map((m) => m.user_id).filter((u) => u !== session.user_id);
      if (others.length) dmNames.set(r.room_id, others.map(displayName).join(', '));
    } catch {
      // Left meanwhile: the next poll no longer lists it.
    }
  }
}

function dmLabel(roomId) {
  return dmNames.get(roomId) ?? session.dms?.[roomId] ?? 'Direct chat';
}

function roomLabel(r) {
  if (r.name) return r.name;
  if (r.alias) return shortAlias(r.alias);
  return r.membership === 'invite' ? 'Direct chat' : dmLabel(r.room_id);
}

function renderRoomList() {
  const joined = roomSummaries.filter((r) => r.membership === 'join');
  const invites = roomSummaries.filter((r) => r.membership === 'invite');
  el.roomList.replaceChildren(...joined.map((r) => {
    const li = document.createElement('li');
    li.dataset.room = r.room_id;
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'room-link';
    const name = document.createElement('span');
    name.className = 'room-name';
    name.textContent = roomLabel(r);
    b.title = r.alias ?? r.room_id;
    b.append(name);
    const current = room?.room_id === r.room_id;
    if (current) b.setAttribute('aria-current', 'true');
    if (r.visibility === 'private') {
      const lock = document.createElement('span');
      lock.className = 'private';
      lock.textContent = 'private';
      b.append(lock);
    }
    // The room on screen is read as it comes in: no badge, whatever the server counted a moment ago.
    const unread = current && document.visibilityState === 'visible' ? 0 : r.unread ?? 0;
    if (unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      // The server counts to 100, which means "100 or more" (spec §6).
      badge.textContent = unread >= 100 ? '99+' : String(unread);
      b.append(badge);
      b.setAttribute('aria-label', `${roomLabel(r)}, ${badge.textContent} unread`);
    }
    b.addEventListener('click', () => {
      if (room?.room_id !== r.room_id) enterRoom(r.room_id).then((ok) => ok && el.message.focus());
    });
    li.append(b);
    return li;
  }));
  el.invitesBox.hidden = invites.length === 0;
  el.inviteList.replaceChildren(...invites.map((r) => {
    const li = document.createElement('li');
    li.dataset.room = r.room_id;
    const name = document.createElement('span');
    name.className = 'room-name';
    name.textContent = roomLabel(r);
    name.title = r.alias ?? r.room_id;
    const accept = document.createElement('button');
    accept.type = 'button';
    accept.className = 'small';
    accept.textContent = 'Accept';
    accept.addEventListener('click', () => enterRoom(r.room_id).then((ok) => ok && el.message.focus()));
    const decline = document.createElement('button');
    decline.type = 'button';
    decline.className = 'secondary small';
    decline.textContent = 'Decline';
    decline.addEventListener('click', async () => {
      try {
        await authed('POST', `/rooms/${enc(r.room_id)}/reject`, {});
      } catch (err) {
        showError(el.roomError, describeError(err));
      }
      refreshRooms();
    });
    li.append(name, accept, decline);
    return li;
  }));
}

/** `ann` → `@ann:our.server`; full ids (`@ann:other.example`) are kept. */
function toUserId(text) {
  const t = text.trim().replace(/^@/, '');
  return t.includes(':') ? `@${t}` : `@${t.toLowerCase()}:${ownServer()}`;
}

/** A room alias from a display name: `Book club` → `book-club`. */
function slug(name) {
  return name.toLowerCase().normalize('NFKD').replace(/[^a-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 64);
}

el.createForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = el.createName.value.trim();
  if (!name) return showError(el.createError, 'Give the room a name.', el.createName);
  const body = { name, visibility: el.createPrivate.checked ? 'private' : 'public' };
  const alias = slug(name);
  if (alias) body.alias = alias;
  showError(el.createError, null);
  try {
    const res = await busy(el.createForm, () => authed('POST', '/rooms', body));
    el.createForm.reset();
    if (await enterRoom(res.room_id)) el.message.focus();
  } catch (err) {
    const text = err.errcode === 'alias_taken'
      ? `A room called #${alias} exists already: join it with the Room field, or choose another name.`
      : describeError(err);
    showError(el.createError, text, el.createName);
  }
});

el.dmForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const who = el.dmUser.value.trim();
  if (!who) return showError(el.dmError, 'Type the username of the person to write to.', el.dmUser);
  const userId = toUserId(who);
  if (userId === session.user_id) return showError(el.dmError, 'That is you: choose someone else.', el.dmUser);
  showError(el.dmError, null);
  try {
    const res = await busy(el.dmForm, () => authed('POST', '/dm', { user_id: userId }));
    session.dms = { ...session.dms, [res.room_id]: displayName(userId) };
    saveSession();
    el.dmForm.reset();
    if (await enterRoom(res.room_id)) el.message.focus();
  } catch (err) {
    showError(el.dmError, describeError(err), el.dmUser);
  }
});

el.inviteForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const who = el.inviteUser.value.trim();
  el.inviteDone.hidden = true;
  if (!who) return showError(el.inviteError, 'Type the username of the person to invite.', el.inviteUser);
  if (!room) return;
  const userId = toUserId(who);
  showError(el.inviteError, null);
  try {
    await busy(el.inviteForm, () => authed('POST', `/rooms/${enc(room.room_id)}/invite`, { user_id: userId }));
    el.inviteForm.reset();
    el.inviteDone.textContent = `Invited ${displayName(userId)}.`;
    el.inviteDone.hidden = false;
  } catch (err) {
    showError(el.inviteError, describeError(err), el.inviteUser);
  }
});

// ---------------------------------------------------------------------------
// Typing, read marks, receipts
// ---------------------------------------------------------------------------

const TYPING_REPEAT_MS = 5000; // the server forgets a typing state after 30 s: say it again well before
const TYPING_IDLE_MS = 4000; // no key for this long: stopped typing
let typingRoom = null; // the room we last said `typing: true` in
let typingSentAt = 0;
let typingIdleTimer = null;

function sendEphemeral(frame) {
  return live?.send({ ...frame, id: `eph-${++ephemeralIds}` });
}

el.message.addEventListener('input', () => {
  if (!room) return;
  if (!el.message.value.trim()) return stopTyping();
  const now = Date.now();
  if (typingRoom !== room.room_id || now - typingSentAt > TYPING_REPEAT_MS) {
    if (typingRoom && typingRoom !== room.room_id) stopTyping();
    if (sendEphemeral({ type: 'typing', room: room.room_id, typing: true })) {
      typingRoom = room.room_id;
      typingSentAt = now;
    }
  }
  clearTimeout(typingIdleTimer);
  typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
});

/** Says we stopped typing (unless a sent message said it already: pass `quietly`). */
function stopTyping(quietly) {
  clearTimeout(typingIdleTimer);
  if (typingRoom && quietly !== true) sendEphemeral({ type: 'typing', room: typingRoom, typing: false });
  typingRoom = null;
  typingSentAt = 0;
}

function onTyping({ room: roomId, user_ids }) {
  if (!room || roomId !== room.room_id) return;
  const others = user_ids.filter((u) => u !== session.user_id).map(displayName);
  el.typing.textContent = others.length === 0 ? ''
    : others.length === 1 ? `${others[0]} is typing…`
      : others.length === 2 ? `${others[0]} and ${others[1]} are typing…`
        : `${others.length} people are typing…`;
}

function onPresence({ user_id, presence }) {
  if (!room) return;
  const m = room.members.find((x) => x.user_id === user_id);
  if (!m) return;
  m.presence = presence;
  const li = [...el.members.children].find((x) => x.dataset.user === user_id);
  if (li) setPresence(li.querySelector('.presence'), presence);
}

function onReceipt({ room: roomId, user_id, seq }) {
  if (!room || roomId !== room.room_id || user_id === session.user_id) return;
  receipts.set(user_id, Math.max(seq, receipts.get(user_id) ?? 0));
  renderSeen();
}

/** "Seen by bob" under the last message, for the members whose read mark reached it. */
function renderSeen() {
  const lastMsg = [...el.messages.querySelectorAll('li.message:not(.membership)')].at(-1);
  const seq = Number(lastMsg?.dataset.seq ?? Infinity);
  const who = [...receipts].filter(([, s]) => s >= seq).map(([u]) => displayName(u));
  el.seen.textContent = who.length ? `Seen by ${who.join(', ')}` : '';
  el.seen.hidden = who.length === 0;
}

let readTimer = null;

/** The room on screen is read up to its last event while the page is visible. */
function markReadSoon() {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    const r = room;
    if (!r || r.removed || document.visibilityState !== 'visible' || r.lastSeq <= r.readSeq) return;
    const seq = r.lastSeq;
    // Over the socket when it is up: its refusal (a race with a kick, say) is an
    // `error` frame we may ignore, not a failed request in the console.
    if (sendEphemeral({ type: 'read', room: r.room_id, seq })) {
      r.readSeq = seq;
    } else {
      authed('POST', `/rooms/${enc(r.room_id)}/read`, { seq }).then(() => { r.readSeq = Math.max(r.readSeq, seq); }, () => {});
    }
    const summary = roomSummaries.find((x) => x.room_id === r.room_id);
    if (summary) summary.unread = 0;
    renderRoomList();
  }, 200);
}

document.addEventListener('visibilitychange', () => {
  if (!session || !room) return;
  markReadSoon();
  if (document.visibilityState === 'visible') refreshRooms();
});

// ---------------------------------------------------------------------------
// Live events
// ---------------------------------------------------------------------------

// Requests over the socket: `join` and `leave` exist as frames too (spec §8).
// Their refusals (a private room, a ban) come back as `error` frames, which
// the page shows in words; over HTTP the browser would also log each refused
// request in the console as a failure, and these refusals are expected.
const wsPending = new Map(); // frame id → {resolve, reject, timer}
let wsRequestIds = 0;

/** Sends `frame` and resolves with its answer; null when the socket is down (use HTTP then). */
function wsRequest(frame) {
  const id = `req-${++wsRequestIds}`;
  if (!live?.send({ ...frame, id })) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    // A socket lost meanwhile never answers: give up as a network failure.
    const timer = setTimeout(() => {
      wsPending.delete(id);
      reject(new ApiError(0, 'network', 'The server did not answer. Check the connection and try again.'));
    }, 10000);
    wsPending.set(id, { resolve, reject, timer });
  });
}

function settleRequest(frame) {
  const pending = frame.id && wsPending.get(frame.id);
  if (!pending) return false;
  wsPending.delete(frame.id);
  clearTimeout(pending.timer);
  if (frame.type === 'error') {
    pending.reject(new ApiError(0, frame.errcode, frame.error, frame.retry_after_ms));
  } else {
    pending.resolve(frame);
  }
  return true;
}

function handleFrame(frame) {
  if (settleRequest(frame)) return;
  switch (frame.type) {
    case 'event': return onEvent(frame);
    case 'gap': return onGap(frame);
    case 'ack': return onAck(frame);
    case 'error': return onErrorFrame(frame);
    case 'typing': return onTyping(frame);
    case 'presence': return onPresence(frame);
    case 'receipt': return onReceipt(frame);
    case 'caught_up':
      // After a (re)subscription: people may have come and gone meanwhile, and
      // a refresh may have failed while the connection was down.
      if (room && frame.room_id === room.room_id) {
        // The first one follows enterRoom(), which has just fetched the list (and
        // joins since are replayed as events); later ones follow a reconnection.
        if (room.membersFresh) room.membersFresh = false;
        else refreshMembersSoon();
        markReadSoon();
      }
      return;
    case 'unsubscribed':
      if (room && frame.room_id === room.room_id && frame.reason === 'left') {
        showError(el.roomError, room.removed ?? 'You left this room (from another device): join it again to follow it.');
        refreshRooms();
      }
      return;
    default:
      // joined, left, pong, …: nothing to show. Unknown types are ignored,
      // as the spec asks of clients, so newer servers do not break this one.
  }
}

const MEMBERSHIP_TYPES = new Set(['join', 'leave', 'invite', 'reject', 'kick', 'ban', 'unban', 'role']);

function onEvent({ room_id, epoch, event }) {
  if (!room || room_id !== room.room_id) return; // a room we switched away from
  // The cursor makes duplicates impossible on a correct server; checking it
  // here as well costs nothing and keeps the screen right regardless.
  if (epoch === room.epoch && event.seq <= room.lastSeq) return;
  room.epoch = epoch;
  room.lastSeq = event.seq;
  const stick = isNearBottom();
  if (event.type === 'redaction') {
    applyRedaction(event.redacts);
  } else if (noteEdit(event)) {
    applyEdit(event.replaces);
  } else {
    const li = renderEvent(event);
    if (li) {
      el.messages.append(li);
      groupOne(li);
    }
  }
  settleOutbox(event.event_id);
  if (MEMBERSHIP_TYPES.has(event.type)) refreshMembersSoon();
  if (event.type === 'room') {
    room.name = event.name ?? null;
    room.topic = event.topic ?? null;
    room.visibility = event.visibility ?? 'public';
    updateHeader();
    refreshRooms();
  }
  if ((event.type === 'kick' || event.type === 'ban') && event.target === session.user_id) {
    const how = event.type === 'kick' ? 'removed you from this room' : 'banned you from this room';
    room.removed = `${displayName(event.sender)} ${how}${event.reason ? `: ${event.reason}` : '.'}`;
    showError(el.roomError, room.removed);
  }
  renderSeen();
  markReadSoon();
  if (stick) scrollToBottom();
}

/**
 * `gap`: the events after `from` up to `to` will never come (the log was
 * trimmed by retention, or started again under a new epoch). Say so on screen
 * and move the cursor past them, so a later resume does not ask again.
 */
function onGap({ room_id, from, to, reason }) {
  if (!room || room_id !== room.room_id) return;
  if (reason === 'history_hidden') {
    // A private room shows its members what happened since they joined: nothing is missing.
    room.epoch = to.epoch;
    room.lastSeq = to.seq;
    return;
  }
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
  if (frame.id?.startsWith('eph-')) return; // a typing or read frame: nothing the person can act on
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
  stopTyping(true); // the message itself ends the typing state (spec §8)
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
  // A message got through: an earlier complaint (a bad room name, say) is old news.
  showError(el.roomError, null);
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
const GROUP_MS = 5 * 60 * 1000; // one sender's messages this close together share one heading

function renderTime(timeEl, ts) {
  const d = new Date(ts);
  const today = new Date().toDateString() === d.toDateString();
  timeEl.dateTime = d.toISOString();
  timeEl.textContent = today ? timeFormat.format(d) : dateTimeFormat.format(d);
  timeEl.title = dateTimeFormat.format(d);
}

/**
 * Remembers an edit (a message with `replaces`); true when `event` is one.
 * A deleted (redacted) edit has no text and counts for nothing.
 */
function noteEdit(event) {
  if (event.type !== 'message' || !event.replaces) return false;
  if (event.redacted) return true;
  const known = edits.get(event.replaces);
  if (!known || known.seq < event.seq) {
    edits.set(event.replaces, { body: event.body, seq: event.seq, id: event.event_id });
  }
  return true;
}

/**
 * A `redaction` arrived live (spec §12): the message it names lost its text,
 * and so did its edits. A deleted edit leaves the original with its own text
 * (the server erased the edit; older edits are not kept here).
 */
function applyRedaction(id) {
  edits.delete(id);
  const li = el.messages.querySelector(`li[data-event-id="${CSS.escape(id)}"]`);
  if (li) {
    markDeleted(li);
    return;
  }
  for (const [original, edit] of edits) {
    if (edit.id !== id) continue;
    edits.delete(original);
    const shown = el.messages.querySelector(`li[data-event-id="${CSS.escape(original)}"]`);
    if (shown && !shown.classList.contains('deleted')) {
      shown.querySelector('.body').textContent = shown.dataset.body ?? '';
      shown.querySelector('.edited').hidden = true;
    }
  }
}

/** Shows a message as deleted: no text, no Edit or Delete. */
function markDeleted(li) {
  li.classList.add('deleted');
  li.classList.remove('editing');
  li.querySelector('.edit-form')?.remove();
  li.querySelector('.actions')?.remove();
  const body = li.querySelector('.body');
  body.hidden = false;
  body.textContent = 'Message deleted';
  li.querySelector('.edited').hidden = true;
}

/** Redraws an original message with the text of its latest edit. */
function applyEdit(originalId) {
  const li = el.messages.querySelector(`li[data-event-id="${CSS.escape(originalId)}"]`);
  const edit = edits.get(originalId);
  if (!li || !edit || li.classList.contains('editing') || li.classList.contains('deleted')) return;
  li.querySelector('.body').textContent = edit.body;
  li.querySelector('.edited').hidden = false;
}

function renderEvents(events) {
  return events.map(renderEvent).filter(Boolean);
}

/** What a membership or state event says, after its sender's name. */
function describeEvent(event) {
  const target = event.target ? displayName(event.target) : '';
  const reason = event.reason ? `: ${event.reason}` : '';
  switch (event.type) {
    case 'join': return 'joined the room';
    case 'leave': return 'left the room';
    case 'invite': return `invited ${target}`;
    case 'reject': return 'declined the invitation';
    case 'kick': return `removed ${target}${reason}`;
    case 'ban': return `banned ${target}${reason}`;
    case 'unban': return `unbanned ${target}${reason}`;
    case 'role': return `made ${target} ${event.role === 'member' ? 'a member' : `a ${event.role}`}`;
    case 'room': {
      const parts = [];
      if (event.name) parts.push(`name “${event.name}”`);
      if (event.topic) parts.push(`topic “${event.topic}”`);
      parts.push(event.visibility ?? 'public');
      return `set the room: ${parts.join(', ')}`;
    }
    default: return null;
  }
}

/**
 * One room event as a list item: a message, or a line saying who joined,
 * left, invited… Edits redraw their original instead; unknown types are
 * skipped (spec §12). Null when there is nothing to show.
 */
function renderEvent(event) {
  shownEventIds.add(event.event_id);
  if (noteEdit(event)) return null;
  const text = event.type === 'message' ? event.body : describeEvent(event);
  if (text === null) return null;
  const li = el.messageTemplate.content.firstElementChild.cloneNode(true);
  li.dataset.seq = event.seq;
  li.dataset.eventId = event.event_id;
  li.dataset.sender = event.sender;
  li.dataset.ts = event.ts;
  const sender = li.querySelector('.sender');
  sender.textContent = displayName(event.sender);
  sender.title = event.sender;
  const mine = event.sender === session?.user_id;
  if (mine) li.classList.add('mine');
  renderTime(li.querySelector('.time'), event.ts);
  const body = li.querySelector('.body');
  body.textContent = text;
  if (event.type === 'message' && event.redacted) {
    markDeleted(li);
  } else if (event.type === 'message') {
    li.dataset.body = event.body;
    const edit = edits.get(event.event_id);
    if (edit) {
      body.textContent = edit.body;
      li.querySelector('.edited').hidden = false;
    }
    // Edit is for one's own messages; Delete too, and for moderators and
    // owners on everyone's (shown by the list's `can-moderate`, which
    // follows one's role as it changes).
    const actions = document.createElement('span');
    actions.className = 'actions';
    if (mine) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'link edit';
      b.textContent = 'Edit';
      b.setAttribute('aria-label', 'Edit this message');
      b.addEventListener('click', () => startEdit(li));
      actions.append(b);
    } else {
      actions.classList.add('moderator-only');
    }
    const d = document.createElement('button');
    d.type = 'button';
    d.className = 'link delete';
    d.textContent = 'Delete';
    d.setAttribute('aria-label', 'Delete this message');
    d.addEventListener('click', () => deleteMessage(li, d));
    actions.append(d);
    li.append(actions);
  } else {
    li.classList.add('membership');
    if (event.type === 'ban') {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'link unban';
      b.textContent = 'Unban';
      b.setAttribute('aria-label', `Unban ${displayName(event.target)}`);
      b.addEventListener('click', () => moderate('unban', event.target));
      li.append(b);
    }
  }
  return li;
}

/**
 * Deletes a message for everyone (`PUT …/redact/{event_id}/{txn_id}`): one's
 * own, or anyone's as a moderator or owner. The first click asks "Delete?",
 * the second deletes. The server erases the
 * text from storage; every member's page gets the `redaction` event.
 */
async function deleteMessage(li, button) {
  if (!button.classList.contains('confirm')) {
    button.classList.add('confirm');
    button.textContent = 'Delete?';
    button.setAttribute('aria-label', 'Really delete this message');
    return;
  }
  const r = room;
  button.disabled = true;
  try {
    await authed('PUT', `/rooms/${enc(r.room_id)}/redact/${enc(li.dataset.eventId)}/${newTxnId()}`, {});
    markDeleted(li);
  } catch (err) {
    button.disabled = false;
    showError(el.roomError, describeError(err));
  }
}

/** Inline editing of one's own message: Enter saves, Escape cancels. */
function startEdit(li) {
  if (li.classList.contains('editing')) return;
  li.classList.add('editing');
  const body = li.querySelector('.body');
  const before = body.textContent;
  const form = document.createElement('form');
  form.className = 'edit-form';
  form.noValidate = true;
  const input = document.createElement('input');
  input.value = before;
  input.setAttribute('aria-label', 'New text of the message');
  const save = document.createElement('button');
  save.type = 'submit';
  save.textContent = 'Save';
  const cancel = document.createElement('button');
  cancel.type = 'button';
  cancel.className = 'secondary';
  cancel.textContent = 'Cancel';
  const error = document.createElement('p');
  error.className = 'error';
  error.hidden = true;
  form.append(input, save, cancel, error);
  body.hidden = true;
  body.after(form);
  input.focus();
  const close = () => {
    form.remove();
    body.hidden = false;
    li.classList.remove('editing');
    applyEdit(li.dataset.eventId);
  };
  cancel.addEventListener('click', close);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') close();
  });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = input.value;
    if (!text.trim() || text === before) return close();
    const r = room;
    try {
      // Over HTTP, whose answer this form waits for (the socket's `send`
      // takes `replaces` too, spec §12).
      await busy(form, () => authed('PUT', `/rooms/${enc(r.room_id)}/send/${newTxnId()}`,
        { body: text, replaces: li.dataset.eventId }));
      // Shown at once; the edit's own event, arriving live, says the same.
      const known = edits.get(li.dataset.eventId);
      if (!known) edits.set(li.dataset.eventId, { body: text, seq: 0 });
      body.textContent = text;
      li.querySelector('.edited').hidden = false;
      close();
    } catch (err) {
      error.textContent = describeError(err);
      error.hidden = false;
    }
  });
}

/**
 * The read marker: a "New messages" line above the first of the `unread`
 * messages others sent since our read mark (GET /rooms counts the same ones).
 */
function placeReadMarker(unread) {
  if (unread <= 0) return;
  let left = unread;
  let first = null;
  // Deleted messages are not counted (spec §6), so they are skipped here too.
  const items = [...el.messages.querySelectorAll('li.message:not(.membership):not(.deleted)')].reverse();
  for (const li of items) {
    if (li.dataset.sender === session.user_id) continue;
    first = li;
    if (--left === 0) break;
  }
  if (!first) return;
  const marker = document.createElement('li');
  marker.className = 'read-marker';
  marker.setAttribute('role', 'separator');
  marker.textContent = 'New messages';
  first.before(marker);
}

/** Marks `li` as continuing its predecessor's group: same sender, messages, close in time. */
function groupOne(li) {
  const prev = li.previousElementSibling;
  const same = prev && prev.classList.contains('message') && !prev.classList.contains('membership')
    && !li.classList.contains('membership') && prev.dataset.sender === li.dataset.sender
    && Number(li.dataset.ts) - Number(prev.dataset.ts) < GROUP_MS;
  li.classList.toggle('continued', Boolean(same));
}

function regroup() {
  for (const li of el.messages.children) groupOne(li);
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
