// Scenarios for gateway/static/client.js, run by tests/test_client_js.py:
//   node tests/js/client_scenarios.js <name>
// A fake clock and a fake WebSocket stand in for the browser, so timing
// (backoff, heartbeat, token refresh) is exact. Exit status 0 = passed.
"use strict";

const assert = require("node:assert/strict");
const path = require("node:path");

// ---- a fake clock: timers run only when the scenario advances time ----
let now = 1_700_000_000_000;
let nextTimerId = 1;
const timers = new Map();
globalThis.setTimeout = (fn, ms) => {
  const id = nextTimerId++;
  timers.set(id, { at: now + Math.max(0, ms || 0), fn, every: null });
  return id;
};
globalThis.setInterval = (fn, ms) => {
  const id = nextTimerId++;
  timers.set(id, { at: now + ms, fn, every: ms });
  return id;
};
globalThis.clearTimeout = globalThis.clearInterval = (id) => timers.delete(id);
Date.now = () => now;
let randomValue = 0.5;
Math.random = () => randomValue;

const flush = () => new Promise((resolve) => setImmediate(resolve));

async function advance(ms) {
  const until = now + ms;
  for (;;) {
    await flush();
    let due = null;
    for (const [id, timer] of timers) {
      if (timer.at <= until && (due === null || timer.at < timers.get(due).at)) due = id;
    }
    if (due === null) break;
    const timer = timers.get(due);
    now = timer.at;
    if (timer.every) timer.at += timer.every;
    else timers.delete(due);
    timer.fn();
  }
  now = until;
  await flush();
}

// ---- a fake WebSocket the scenario plays the server for ----
const sockets = [];
class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    sockets.push(this);
  }
  send(text) {
    assert.equal(this.readyState, 1, "send on a socket that is not open");
    this.sent.push(JSON.parse(text));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  // server side
  accept(clientId = "c-" + sockets.length) {
    this.readyState = 1;
    this.push({ type: "connection_established", clientId, eventId: null, timestamp: "t" });
  }
  push(message) {
    this.onmessage && this.onmessage({ data: JSON.stringify(message) });
  }
  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose && this.onclose({ code, reason });
  }
  sentOfType(type) {
    return this.sent.filter((m) => m.type === type);
  }
}

const Seatcast = require(path.resolve(__dirname, "../../../../gateway/static/client.js"));
const last = () => sockets[sockets.length - 1];
const tokenOf = (ws) => new URL(ws.url).searchParams.get("token");

function jwt(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.sig`;
}

function change(eventId, seq, type = "booking_created") {
  return { type, eventId, bookingId: "BK-" + seq, userId: 10, seats: 1, availableSeats: 100 - seq, seq, timestamp: "t" };
}

function makeClient(options = {}) {
  const client = new Seatcast.Client({
    urls: ["ws://a:8001", "ws://b:8002"],
    token: "tok",
    WebSocket: FakeWebSocket,
    ...options,
  });
  const seen = { states: [], changes: [], subscribed: [] };
  client.on("state", (s) => seen.states.push(s));
  client.on("booking_created", (m) => seen.changes.push(m.seq));
  client.on("booking_cancelled", (m) => seen.changes.push(m.seq));
  client.on("subscribed", (m) => seen.subscribed.push(m));
  return { client, seen };
}

const scenarios = {
  async backoff_is_full_jitter_and_capped() {
    randomValue = 1 - 1e-9;
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((n) => Seatcast.backoffDelay(n, 500, 15000)),
      [499, 999, 1999, 3999, 7999, 15000 - 1, 15000 - 1]);
    randomValue = 0;
    assert.equal(Seatcast.backoffDelay(9, 500, 15000), 0);
    randomValue = 0.5;
    assert.equal(Seatcast.backoffDelay(2, 500, 15000), 1000);
    // The client waits exactly those delays between refused attempts, alternating replicas.
    randomValue = 1 - 1e-9;
    const { client, seen } = makeClient({ backoff: { initialMs: 100, maxMs: 1000 } });
    client.connect();
    await flush();
    for (let i = 0; i < 6; i++) {
      last().drop(1006);
      await advance(1000);
    }
    const delays = seen.states.filter((s) => s.delayMs !== null).map((s) => s.delayMs);
    assert.deepEqual(delays, [99, 199, 399, 799, 999, 999]);
    assert.deepEqual(sockets.map((ws) => new URL(ws.url).host),
      ["a:8001", "b:8002", "a:8001", "b:8002", "a:8001", "b:8002", "a:8001"]);
    assert.ok(seen.states.every((s) => s.state === "connecting"), "never connected: still connecting");
  },

  async subscribes_every_event_with_mode_add() {
    const { client } = makeClient({ events: [1, 2] });
    client.connect();
    await flush();
    last().accept();
    client.subscribe(3);
    client.subscribe(3);
    assert.deepEqual(last().sentOfType("subscribe_event"), [
      { type: "subscribe_event", eventId: 1, mode: "add" },
      { type: "subscribe_event", eventId: 2, mode: "add" },
      { type: "subscribe_event", eventId: 3, mode: "add" },
    ]);
    client.unsubscribe(2);
    assert.deepEqual(last().sentOfType("unsubscribe_event"), [{ type: "unsubscribe_event", eventId: 2 }]);
  },

  async resubscribes_with_since_on_another_replica() {
    const { client, seen } = makeClient({ events: [7, 8] });
    client.connect();
    await flush();
    const first = last();
    first.accept("one");
    first.push({ type: "subscribed", eventId: 7, seq: 5, availableSeats: 95, timestamp: "t" });
    first.push({ type: "subscribed", eventId: 8, seq: null, availableSeats: null, timestamp: "t" });
    first.push(change(7, 6));
    first.push(change(7, 7));
    first.drop(1012, "Server restarting");
    const reconnecting = seen.states[seen.states.length - 1];
    assert.equal(reconnecting.state, "reconnecting");
    assert.equal(reconnecting.code, 1012);
    await advance(1000);
    const second = last();
    assert.notEqual(second, first);
    assert.equal(new URL(second.url).host, "b:8002");
    second.accept("two");
    assert.deepEqual(second.sentOfType("subscribe_event"), [
      { type: "subscribe_event", eventId: 7, mode: "add", since: 7 },
      { type: "subscribe_event", eventId: 8, mode: "add" },
    ]);
    const connected = seen.states[seen.states.length - 1];
    assert.deepEqual([connected.state, connected.replica, connected.clientId], ["connected", "b:8002", "two"]);
    assert.equal(client.lastSeq(7), 7);
  },

  async drops_duplicates_by_seq_across_a_replay() {
    const { client, seen } = makeClient({ events: [7] });
    client.connect();
    await flush();
    last().accept();
    last().push({ type: "subscribed", eventId: 7, seq: 5, availableSeats: 95, timestamp: "t" });
    for (const seq of [5, 6, 7, 7, 6, 8]) last().push(change(7, seq));
    last().drop(1006);
    await advance(1000);
    last().accept();
    last().push({ type: "subscribed", eventId: 7, seq: 10, availableSeats: 90, recovered: true, timestamp: "t" });
    for (const seq of [7, 8, 9, 10]) last().push(change(7, seq, "booking_cancelled"));
    last().push(change(7, 11));
    last().push(change(99, 1));
    assert.deepEqual(seen.changes, [6, 7, 8, 9, 10, 11]);
  },

  async trusts_subscribed_when_history_was_lost() {
    const { client, seen } = makeClient({ events: [7] });
    client.connect();
    await flush();
    last().accept();
    last().push({ type: "subscribed", eventId: 7, seq: 3, availableSeats: 97, timestamp: "t" });
    last().push(change(7, 4));
    last().drop(1012);
    await advance(1000);
    last().accept();
    assert.equal(last().sentOfType("subscribe_event")[0].since, 4);
    last().push({ type: "subscribed", eventId: 7, seq: 20, availableSeats: 80, recovered: false, timestamp: "t" });
    last().push(change(7, 15));
    last().push(change(7, 21));
    assert.deepEqual(seen.changes, [4, 21]);
    assert.equal(seen.subscribed[1].recovered, false);
  },

  async stops_on_a_refused_static_token() {
    const { client, seen } = makeClient({ events: [7] });
    client.connect();
    await flush();
    last().drop(1008, "Invalid authentication token");
    await advance(60_000);
    assert.equal(sockets.length, 1, "no reconnection after 1008");
    const final = seen.states[seen.states.length - 1];
    assert.deepEqual([final.state, final.code, final.reason], ["closed", 1008, "Invalid authentication token"]);
    assert.equal(client.state, "closed");
  },

  async reconnects_after_1008_when_get_token_gives_a_new_token() {
    const tokens = ["first", "second", "second"];
    let calls = 0;
    const { client, seen } = makeClient({ token: undefined, getToken: async () => tokens[calls++] });
    client.connect();
    await flush();
    assert.equal(tokenOf(last()), "first");
    last().drop(1008, "Invalid authentication token");
    await advance(1000);
    assert.equal(sockets.length, 2);
    assert.equal(tokenOf(last()), "second");
    last().drop(1008, "Invalid authentication token");
    await advance(60_000);
    assert.equal(sockets.length, 2, "the same token again: stop");
    assert.equal(seen.states[seen.states.length - 1].state, "closed");
  },

  async reconnects_after_a_rate_limit_close() {
    const { client } = makeClient();
    client.connect();
    await flush();
    last().accept();
    last().drop(1008, "Too many messages");
    await advance(1000);
    assert.equal(sockets.length, 2);
  },

  async heartbeat_detects_a_dead_connection() {
    const { client, seen } = makeClient({ heartbeatIntervalMs: 15000, heartbeatTimeoutMs: 5000 });
    client.connect();
    await flush();
    const ws = last();
    ws.accept();
    await advance(15000);
    assert.equal(ws.sentOfType("ping").length, 1);
    ws.push({ type: "pong", timestamp: "t" });
    await advance(15000);
    assert.equal(ws.sentOfType("ping").length, 2);
    assert.equal(ws.closedWith, null, "answered pings keep the connection");
    await advance(5000);
    assert.deepEqual(ws.closedWith, { code: 4000, reason: "heartbeat timeout" });
    assert.equal(seen.states[seen.states.length - 1].state, "reconnecting");
    await advance(1000);
    assert.equal(sockets.length, 2, "a new connection after the dead one");
  },

  async gives_up_on_a_silent_handshake() {
    const { client } = makeClient({ connectTimeoutMs: 3000 });
    client.connect();
    await flush();
    last().readyState = 1;
    await advance(3000);
    assert.equal(last().closedWith.code, 4000);
    await advance(1000);
    assert.equal(sockets.length, 2);
  },

  async refreshes_the_token_before_it_expires() {
    const exp = (seconds) => Math.floor(now / 1000) + seconds;
    let issued = 0;
    const getToken = () => jwt({ sub: "10", exp: exp(600), n: issued++ });
    const { client } = makeClient({
      token: undefined, getToken, refreshMarginMs: 60_000, heartbeatIntervalMs: 1e9,
    });
    client.connect();
    await flush();
    const ws = last();
    ws.accept();
    await advance(539_000);
    assert.equal(ws.sentOfType("refresh_token").length, 0, "not yet");
    await advance(1_000);
    const [refresh] = ws.sentOfType("refresh_token");
    assert.ok(refresh, "refresh_token sent a minute before exp");
    assert.notEqual(refresh.token, tokenOf(ws));
    ws.push({ type: "token_refreshed", expiresAt: "t" });
    ws.drop(1006);
    await advance(1000);
    assert.equal(sockets.length, 2);
    assert.equal(issued, 3, "getToken is asked again for the new connection");
  },

  async reports_connection_states() {
    const { client, seen } = makeClient();
    client.connect();
    await flush();
    last().accept("abc");
    last().drop(1012);
    await advance(1000);
    last().accept("def");
    client.close();
    assert.deepEqual(seen.states.map((s) => s.state),
      ["connecting", "connected", "reconnecting", "reconnecting", "connected", "closed"]);
    assert.deepEqual(seen.states.filter((s) => s.state === "connected").map((s) => [s.replica, s.clientId]),
      [["a:8001", "abc"], ["b:8002", "def"]]);
    assert.equal(last().closedWith.code, 1000);
    await advance(60_000);
    assert.equal(sockets.length, 2, "close() stops reconnecting");
  },

  async a_throwing_handler_does_not_stop_delivery() {
    const errors = [];
    globalThis.reportError = (error) => errors.push(error.message);
    const { client, seen } = makeClient({ events: [7] });
    client.on("booking_created", () => { throw new Error("boom"); });
    client.connect();
    await flush();
    last().accept();
    last().push(change(7, 1));
    last().push(change(7, 2));
    assert.deepEqual(seen.changes, [1, 2]);
    assert.deepEqual(errors, ["boom", "boom"]);
  },
};

const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
scenarios[name]().then(
  () => process.exit(0),
  (error) => {
    console.error(error && error.stack ? error.stack : error);
    process.exit(1);
  },
);
