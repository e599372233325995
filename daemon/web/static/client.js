// civitai-daemon client module: the REST helper and the WebSocket feed.
//
// Every URL is relative ("api/...", "ws/downloads") so the GUI keeps working
// when a reverse proxy serves it under a sub-path such as /civitai/gui.
// No dependencies; usable from any page or script that can import a module.

export const TOKEN_KEY = 'civitai-daemon-token';

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return ''; // storage disabled (private mode, file://): run without a token
  }
}

export function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* ignore: nothing better to do without storage */
  }
}

/** An HTTP error from the API; `status` is the HTTP code (0 = network). */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.body = body;
  }
}

/**
 * Call the daemon's REST API. `path` is relative ("api/status").
 * Resolves with the parsed JSON body; rejects with ApiError on a non-2xx
 * answer (message = the server's {"error"} text when there is one) or when
 * the daemon cannot be reached (status 0).
 */
export async function api(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(new URL(path, location.href), init);
  } catch (err) {
    throw new ApiError(0, 'daemon unreachable', null);
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null; // e.g. a proxy's HTML error page
    }
  }
  if (!response.ok) {
    const message = (data && typeof data.error === 'string' && data.error)
      || `HTTP ${response.status} ${response.statusText}`.trim();
    throw new ApiError(response.status, message, data);
  }
  return data;
}

/** ws(s)://…/ws/downloads resolved against the page, with ?token= when set. */
export function feedUrl(path = 'ws/downloads') {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const token = getToken();
  if (token) url.searchParams.set('token', token);
  return url.toString();
}

/**
 * The live event feed. Connects at once and reconnects by itself, with a
 * back-off that doubles from 0.5 s up to 5 s, so a daemon restart is picked
 * up within a few seconds.
 *
 *   const feed = new Feed({
 *     onEvent: (msg) => ...,        // {event, time, data}; the first is 'snapshot'
 *     onState: (state) => ...,      // 'connecting' | 'live' | 'down'
 *   });
 *   feed.reconnect();               // e.g. after the token changed
 *   feed.close();
 */
export class Feed {
  constructor({ path = 'ws/downloads', onEvent = () => {}, onState = () => {},
    minDelay = 500, maxDelay = 5000 } = {}) {
    this.path = path;
    this.onEvent = onEvent;
    this.onState = onState;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.delay = minDelay;
    this.ws = null;
    this.timer = null;
    this.closed = false;
    this.state = null;
    this._connect();
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state);
  }

  _connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.closed) return;
    if (this.state !== 'down') this._setState('connecting');
    let ws;
    try {
      ws = new WebSocket(feedUrl(this.path));
    } catch {
      this._scheduleRetry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.delay = this.minDelay; // healthy again: next outage starts fast
      this._setState('live');
    };
    ws.onmessage = (msg) => {
      if (ws !== this.ws) return;
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch {
        return; // not ours; ignore rather than break the feed
      }
      if (event && typeof event.event === 'string') {
        try {
          this.onEvent(event);
        } catch (err) {
          console.error('feed handler failed', err);
        }
      }
    };
    // onerror is always followed by onclose; only onclose schedules a retry.
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.ws = null;
      this._setState('down');
      this._scheduleRetry();
    };
  }

  _scheduleRetry() {
    if (this.closed || this.timer) return;
    // a little jitter so many open tabs do not reconnect in lock-step
    const wait = Math.min(this.delay, this.maxDelay) * (0.8 + Math.random() * 0.4);
    this.delay = Math.min(this.delay * 2, this.maxDelay);
    this.timer = setTimeout(() => this._connect(), wait);
  }

  /** Drop the current socket and connect again now (token changed). */
  reconnect() {
    this.closed = false;
    this.delay = this.minDelay;
    const old = this.ws;
    this.ws = null;
    if (old) {
      old.onclose = null;
      old.close();
    }
    this._connect();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = null;
    const old = this.ws;
    this.ws = null;
    if (old) {
      old.onclose = null;
      old.close();
    }
    this._setState('down');
  }
}
