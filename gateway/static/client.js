/*!
 * seatcast browser client — served by every gateway replica at /client.js.
 * No dependencies. Works as a classic script and as an ES module.
 *
 * Classic script:
 *
 *   <script src="http://127.0.0.1:8001/client.js"></script>
 *   <script>
 *     const client = new Seatcast.Client({
 *       urls: ["ws://127.0.0.1:8001", "ws://127.0.0.1:8002"], // replicas, tried in turn
 *       token: "<jwt>",                 // or getToken: async () => "<fresh jwt>"
 *       events: [42],                   // subscribed on every (re)connection
 *     });
 *     client.on("booking_created", (m) => console.log(m.availableSeats, m.seq));
 *     client.on("state", (s) => console.log(s.state, s.replica));
 *     client.connect();
 *   </script>
 *
 * ES module: the file defines `globalThis.Seatcast` when it runs, whichever way
 * it is loaded, so import it for that effect (module scripts from another
 * origin need CORS; same-origin paths always work):
 *
 *   import "/client.js";
 *   const client = new globalThis.Seatcast.Client({ token, events: [42] });
 *
 *   // or lazily:  await import("/client.js"); new Seatcast.Client(...)
 *
 * Options (all optional except a token or getToken):
 *   urls        gateway base URLs ("ws://host:port"); default: the page's own
 *               origin. The client starts with the first and moves to the next
 *               one after every failed or lost connection.
 *   token       a JWT (sent as ?token=, since browsers cannot set headers).
 *   getToken    () => string | Promise<string>; called before every connection
 *               and shortly before the token expires (then sent to the server
 *               as `refresh_token`). It wins over `token`.
 *   events      event ids to subscribe to (more with subscribe()).
 *   backoff     { initialMs: 500, maxMs: 15000 }: reconnect delays are "full
 *               jitter" — a random wait in [0, min(maxMs, initialMs * 2^n)]
 *               after the n-th consecutive failure — so a replica's restart
 *               does not bring every browser back in the same millisecond.
 *   heartbeatIntervalMs (15000), heartbeatTimeoutMs (10000): a `ping` is sent
 *               every interval; no `pong` within the timeout = dead connection.
 *   connectTimeoutMs (10000): no `connection_established` within it = failure.
 *   refreshMarginMs (60000): how long before `exp` getToken is asked again.
 *   WebSocket   the WebSocket class to use (default: the global one).
 *
 * Methods: connect(), close(), subscribe(id), unsubscribe(id), lastSeq(id),
 *   send(message), on(type, fn) -> off function, off(type, fn);
 *   properties state, replica (host:port), clientId.
 *
 * Events for on(type, fn): every server message type — "booking_created",
 * "booking_cancelled", "subscribed", "unsubscribed", "connection_established",
 * "pong", "stats", "token_refreshed", "error" — plus "message" (every server
 * message) and "state": { state, url, replica, clientId, attempt, delayMs,
 * code, reason } where state is "connecting" (never connected yet),
 * "connected", "reconnecting" (lost; waiting `delayMs`, then trying `url`) or
 * "closed" (close() was called, or the token was refused: code 1008 — the
 * client stops unless getToken returns a different token).
 *
 * Guarantees: after a reconnection every event is resubscribed with `since` =
 * the last seq delivered, so the gateway replays what was missed; a message
 * whose seq is not above the last one delivered for its event is dropped, so
 * handlers never see a change twice. When the server answers `subscribed` with
 * `recovered: false` (its history no longer reaches back), the client jumps to
 * the seq in that message: trust its `availableSeats`.
 */
(function (root) {
  "use strict";

  var VERSION = "1.0.0";
  var CHANGE_TYPES = { booking_created: true, booking_cancelled: true };
  // Browsers may only send 1000 or 3000-4999 in close().
  var CLOSE_NORMAL = 1000;
  var CLOSE_DEAD = 4000;
  var STABLE_CONNECTION_MS = 10000;

  /** Full jitter: a random delay in [0, min(maxMs, initialMs * 2^attempt)]. */
  function backoffDelay(attempt, initialMs, maxMs, random) {
    var ceiling = Math.min(maxMs, initialMs * Math.pow(2, Math.max(0, attempt)));
    return Math.floor((random || Math.random)() * ceiling);
  }

  /** The claims of a JWT, without verifying it (the server does that); null if unreadable. */
  function tokenClaims(token) {
    try {
      var part = String(token).split(".")[1];
      var base64 = part.replace(/-/g, "+").replace(/_/g, "/");
      while (base64.length % 4) base64 += "=";
      return JSON.parse(atob(base64));
    } catch (error) {
      return null;
    }
  }

  /** True when a 1008 close means the token was refused (not e.g. a rate limit). */
  function isAuthFailure(code, reason) {
    return code === 1008 && /token|auth/i.test(reason || "");
  }

  function defaultUrls() {
    var location = root.location;
    if (!location || !/^https?:$/.test(location.protocol)) return [];
    return [(location.protocol === "https:" ? "wss://" : "ws://") + location.host];
  }

  function hostOf(url) {
    var match = /^wss?:\/\/([^/?#]+)/i.exec(url || "");
    return match ? match[1] : null;
  }

  function report(error) {
    // A throwing handler must not break delivery to the others.
    if (typeof root.reportError === "function") root.reportError(error);
    else setTimeout(function () { throw error; }, 0);
  }

  function Client(options) {
    options = options || {};
    var urls = options.urls == null ? defaultUrls() : [].concat(options.urls);
    this._urls = urls.map(function (u) { return String(u).replace(/\/+$/, ""); });
    if (!this._urls.length) throw new Error("Seatcast.Client: no gateway URL (pass urls)");
    if (!options.token && typeof options.getToken !== "function") {
      throw new Error("Seatcast.Client: pass token or getToken");
    }
    var backoff = options.backoff || {};
    this._initialMs = backoff.initialMs || 500;
    this._maxMs = backoff.maxMs || 15000;
    this._heartbeatIntervalMs = options.heartbeatIntervalMs || 15000;
    this._heartbeatTimeoutMs = options.heartbeatTimeoutMs || 10000;
    this._connectTimeoutMs = options.connectTimeoutMs || 10000;
    this._refreshMarginMs = options.refreshMarginMs || 60000;
    this._WebSocket = options.WebSocket || root.WebSocket;
    this._getToken = options.getToken || null;
    // The token of the current (or next) connection.
    this._token = options.token || null;
    // A token sent with refresh_token and not yet confirmed; null otherwise.
    this._pendingToken = null;
    // eventId -> last seq delivered (null until the first one).
    this._lastSeq = new Map();
    // eventId -> the `since` sent in the last subscribe, or null.
    this._sentSince = new Map();
    // type -> array of handlers.
    this._handlers = new Map();
    this._urlIndex = 0;
    // Consecutive failed attempts; reset once a connection has lasted a while.
    this._attempt = 0;
    // The socket being opened or open; null between connections.
    this._ws = null;
    this._state = "idle";
    this._everConnected = false;
    this._connectedAt = 0;
    this._clientId = null;
    // Each timer is null when not scheduled.
    this._reconnectTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._openTimer = null;
    this._refreshTimer = null;
    this._stopped = true;
    var self = this;
    (options.events || []).forEach(function (id) { self._lastSeq.set(Number(id), null); });
    this._onOnline = function () { self._retryNow(); };
  }

  Client.prototype = {
    get state() { return this._state; },
    get url() { return this._urls[this._urlIndex]; },
    get replica() { return hostOf(this._urls[this._urlIndex]); },
    get clientId() { return this._clientId; },

    on: function (type, fn) {
      if (!this._handlers.has(type)) this._handlers.set(type, []);
      this._handlers.get(type).push(fn);
      var self = this;
      return function () { self.off(type, fn); };
    },

    off: function (type, fn) {
      var list = this._handlers.get(type);
      if (list) this._handlers.set(type, list.filter(function (h) { return h !== fn; }));
    },

    /** Start connecting; reconnects until close(). Calling it again does nothing. */
    connect: function () {
      if (!this._stopped) return this;
      this._stopped = false;
      if (root.addEventListener) root.addEventListener("online", this._onOnline);
      this._open();
      return this;
    },

    /** Close for good: no reconnection, every timer cleared. */
    close: function () {
      this._stop();
      var ws = this._ws;
      this._detach();
      if (ws) { try { ws.close(CLOSE_NORMAL, "client closed"); } catch (error) { /* already closing */ } }
      this._setState("closed", {});
    },

    /** Watch one more event (kept across reconnections). */
    subscribe: function (eventId) {
      var id = Number(eventId);
      if (this._lastSeq.has(id)) return;
      this._lastSeq.set(id, null);
      if (this._isEstablished()) this._sendSubscribe(id);
    },

    unsubscribe: function (eventId) {
      var id = Number(eventId);
      this._lastSeq.delete(id);
      this._sentSince.delete(id);
      if (this._isEstablished()) this.send({ type: "unsubscribe_event", eventId: id });
    },

    /** The last seq delivered for an event, or null. */
    lastSeq: function (eventId) {
      var seq = this._lastSeq.get(Number(eventId));
      return seq == null ? null : seq;
    },

    /** Send a message object now; false when not connected. */
    send: function (message) {
      if (!this._ws || this._ws.readyState !== 1) return false;
      this._ws.send(JSON.stringify(message));
      return true;
    },

    _isEstablished: function () {
      return this._state === "connected" && this._ws && this._ws.readyState === 1;
    },

    _emit: function (type, payload) {
      var list = this._handlers.get(type);
      if (!list) return;
      list.slice().forEach(function (fn) {
        try { fn(payload); } catch (error) { report(error); }
      });
    },

    _setState: function (state, extra) {
      this._state = state;
      var info = {
        state: state,
        url: this.url,
        replica: this.replica,
        clientId: state === "connected" ? this._clientId : null,
        attempt: this._attempt,
        delayMs: null,
        code: null,
        reason: null,
      };
      for (var key in extra) info[key] = extra[key];
      this._emit("state", info);
    },

    _open: function () {
      var self = this;
      this._reconnectTimer = null;
      this._setState(this._everConnected ? "reconnecting" : "connecting", {});
      Promise.resolve(this._getToken ? this._getToken() : this._token).then(function (token) {
        if (self._stopped) return;
        if (!token) throw new Error("Seatcast.Client: getToken returned no token");
        self._token = token;
        self._dial(token);
      }).catch(function (error) {
        if (self._stopped) return;
        report(error);
        self._scheduleReconnect({ reason: "getToken failed" });
      });
    },

    _dial: function (token) {
      var self = this;
      var url = this.url + "/ws?token=" + encodeURIComponent(token);
      var ws;
      try {
        ws = new this._WebSocket(url);
      } catch (error) {
        // A malformed URL throws synchronously: try the next one later.
        this._scheduleReconnect({ reason: String(error && error.message) });
        return;
      }
      this._ws = ws;
      this._clientId = null;
      ws.onmessage = function (event) { if (self._ws === ws) self._onMessage(event.data); };
      ws.onclose = function (event) { if (self._ws === ws) self._onClose(event.code, event.reason); };
      ws.onerror = function () { /* a close event follows */ };
      this._openTimer = setTimeout(function () {
        self._openTimer = null;
        self._abandon("no connection_established in time");
      }, this._connectTimeoutMs);
    },

    _onMessage: function (data) {
      var message;
      try { message = JSON.parse(data); } catch (error) { return; }
      if (!message || typeof message.type !== "string") return;
      var type = message.type;
      if (type === "connection_established") this._onEstablished(message);
      else if (type === "subscribed") this._onSubscribed(message);
      else if (type === "pong") this._clearTimer("_pongTimer");
      else if (type === "token_refreshed") this._onTokenRefreshed();
      else if (type === "error" && message.code === "invalid_token") this._pendingToken = null;
      else if (CHANGE_TYPES[type] && !this._accept(message)) return;
      this._emit(type, message);
      this._emit("message", message);
    },

    /** Record a change's seq; false for a duplicate or an event no longer watched. */
    _accept: function (message) {
      var id = Number(message.eventId);
      if (!this._lastSeq.has(id)) return false;
      var last = this._lastSeq.get(id);
      if (typeof message.seq !== "number") return true;
      if (last != null && message.seq <= last) return false;
      this._lastSeq.set(id, message.seq);
      return true;
    },

    _onEstablished: function (message) {
      this._clearTimer("_openTimer");
      this._clientId = message.clientId || null;
      this._everConnected = true;
      this._connectedAt = Date.now();
      this._setState("connected", {});
      var self = this;
      this._lastSeq.forEach(function (_, id) { self._sendSubscribe(id); });
      this._startHeartbeat();
      this._scheduleRefresh();
    },

    _sendSubscribe: function (id) {
      var message = { type: "subscribe_event", eventId: id, mode: "add" };
      var last = this._lastSeq.get(id);
      if (last != null) message.since = last;
      this._sentSince.set(id, last == null ? null : last);
      this.send(message);
    },

    _onSubscribed: function (message) {
      var id = Number(message.eventId);
      if (!this._lastSeq.has(id) || typeof message.seq !== "number") return;
      var replayFollows = this._sentSince.get(id) != null && message.recovered !== false;
      var last = this._lastSeq.get(id);
      // Without a replay, `seq` is where the live messages start from.
      if (!replayFollows && (last == null || message.seq > last)) this._lastSeq.set(id, message.seq);
    },

    _startHeartbeat: function () {
      var self = this;
      this._clearTimer("_pingTimer");
      this._pingTimer = setInterval(function () {
        if (self._pongTimer) return;
        if (!self.send({ type: "ping" })) return;
        self._pongTimer = setTimeout(function () {
          self._pongTimer = null;
          self._abandon("heartbeat timeout");
        }, self._heartbeatTimeoutMs);
      }, this._heartbeatIntervalMs);
    },

    _scheduleRefresh: function () {
      this._clearTimer("_refreshTimer");
      if (!this._getToken) return;
      var claims = tokenClaims(this._token);
      if (!claims || typeof claims.exp !== "number") return;
      var remaining = claims.exp * 1000 - Date.now();
      var delay = remaining > 2 * this._refreshMarginMs ? remaining - this._refreshMarginMs : remaining / 2;
      var self = this;
      this._refreshTimer = setTimeout(function () {
        self._refreshTimer = null;
        self._refresh();
      }, Math.max(1000, delay));
    },

    _refresh: function () {
      var self = this;
      Promise.resolve(this._getToken()).then(function (token) {
        if (!token || token === self._token || !self._isEstablished()) {
          self._scheduleRefresh();
          return;
        }
        self._pendingToken = token;
        self.send({ type: "refresh_token", token: token });
      }).catch(function (error) {
        report(error);
        self._scheduleRefresh();
      });
    },

    _onTokenRefreshed: function () {
      if (this._pendingToken) this._token = this._pendingToken;
      this._pendingToken = null;
      this._scheduleRefresh();
    },

    _onClose: function (code, reason) {
      this._detach();
      if (this._stopped) return;
      if (isAuthFailure(code, reason)) {
        this._onAuthFailure(code, reason);
        return;
      }
      this._scheduleReconnect({ code: code, reason: reason || null });
    },

    _onAuthFailure: function (code, reason) {
      var self = this;
      var refused = this._token;
      if (!this._getToken) {
        this._stopAfterRefusal(code, reason);
        return;
      }
      Promise.resolve(this._getToken()).then(function (token) {
        if (self._stopped) return;
        if (!token || token === refused) self._stopAfterRefusal(code, reason);
        else self._scheduleReconnect({ code: code, reason: reason || null });
      }, function () { self._stopAfterRefusal(code, reason); });
    },

    _stopAfterRefusal: function (code, reason) {
      this._stop();
      this._setState("closed", { code: code, reason: reason || null });
    },

    _stop: function () {
      this._stopped = true;
      if (root.removeEventListener) root.removeEventListener("online", this._onOnline);
      this._clearTimers();
    },

    /** Give up on a socket that stopped answering, without waiting for its close. */
    _abandon: function (reason) {
      var ws = this._ws;
      this._detach();
      if (ws) { try { ws.close(CLOSE_DEAD, reason); } catch (error) { /* already closed */ } }
      if (!this._stopped) this._scheduleReconnect({ code: null, reason: reason });
    },

    _detach: function () {
      var ws = this._ws;
      this._ws = null;
      this._clearTimer("_openTimer");
      this._clearTimer("_pongTimer");
      this._clearTimer("_pingTimer");
      this._clearTimer("_refreshTimer");
      this._pendingToken = null;
      if (ws) { ws.onmessage = ws.onclose = ws.onerror = null; }
    },

    _scheduleReconnect: function (extra) {
      if (this._connectedAt && Date.now() - this._connectedAt >= STABLE_CONNECTION_MS) this._attempt = 0;
      this._connectedAt = 0;
      // Another replica is the best bet after a failure or a 1012/4008 close.
      this._urlIndex = (this._urlIndex + 1) % this._urls.length;
      var delay = backoffDelay(this._attempt, this._initialMs, this._maxMs);
      this._attempt += 1;
      extra.delayMs = delay;
      this._setState(this._everConnected ? "reconnecting" : "connecting", extra);
      var self = this;
      this._reconnectTimer = setTimeout(function () { self._open(); }, delay);
    },

    _retryNow: function () {
      if (!this._reconnectTimer) return;
      this._clearTimer("_reconnectTimer");
      this._open();
    },

    _clearTimer: function (name) {
      if (this[name] !== null) {
        clearTimeout(this[name]);
        clearInterval(this[name]);
        this[name] = null;
      }
    },

    _clearTimers: function () {
      this._clearTimer("_reconnectTimer");
      this._clearTimer("_openTimer");
      this._clearTimer("_pingTimer");
      this._clearTimer("_pongTimer");
      this._clearTimer("_refreshTimer");
    },
  };

  var api = {
    Client: Client,
    backoffDelay: backoffDelay,
    tokenClaims: tokenClaims,
    VERSION: VERSION,
  };
  root.Seatcast = api;
  if (typeof module === "object" && module && module.exports) module.exports = api;
})(typeof globalThis !== "undefined" ? globalThis : this);
