// The web terminal: an xterm.js screen on a pseudo-terminal of a SandboxKit session.
//
//   /terminal                              creates a session and a terminal
//   /terminal?session=<id>                 a new terminal in that session
//   /terminal?session=<id>&terminal=<tid>  reattaches to that terminal (what a reload does)
//
// Output travels as binary WebSocket messages that carry the terminal's output stream from a byte offset; the page
// counts the bytes it has shown, so after a dropped connection it asks for exactly the rest (?since=) and nothing is
// shown twice or missed. API keys live in sessionStorage only and go out as a header, never in a URL: the WebSocket
// authenticates with a single-use ticket fetched just before each connect.
(() => {
  'use strict';

  const KEY_STORAGE = 'sandboxkit-key';
  const SESSION_REFRESH_MS = 30_000;
  const RESIZE_DEBOUNCE_MS = 100;
  const RECONNECT_FIRST_MS = 500;
  const RECONNECT_MAX_MS = 10_000;
  // The server closes with this when the terminal or its session no longer exists.
  const CLOSE_GONE = 4404;

  const $ = (id) => document.getElementById(id);
  const ui = {
    frame: $('terminal-frame'),
    screen: $('terminal'),
    session: $('status-session'),
    expiry: $('status-expiry'),
    connection: $('status-connection'),
    message: $('status-message'),
    keyForm: $('key-form'),
    keyInput: $('key-input'),
    newTerminal: $('new-terminal'),
    download: $('download-recording'),
  };

  const CONNECTION_LABELS = {
    starting: 'starting…',
    connecting: 'connecting…',
    connected: 'connected',
    reconnecting: 'reconnecting…',
    closed: 'closed',
  };

  const params = new URLSearchParams(location.search);
  let sessionId = params.get('session') || null;
  let terminalId = params.get('terminal') || null;
  let expiresAt = null;
  let connection = 'starting';
  // Bytes of the terminal's output stream already written to the screen: the next connect asks for output from here.
  let offset = 0;
  let socket = null;
  let reconnectDelay = RECONNECT_FIRST_MS;
  let reconnectTimer = 0;
  let connectAttempt = 0;
  // Set once the terminal exited or is gone: a closing socket then means nothing to retry.
  let finished = false;
  let sessionEnded = false;

  if (typeof window.Terminal !== 'function' || typeof window.FitAddon?.FitAddon !== 'function') {
    ui.message.textContent = 'xterm.js did not load: check /terminal/assets/xterm.js';
    ui.message.dataset.kind = 'error';
    return;
  }

  const term = new window.Terminal({
    cursorBlink: true,
    fontFamily: getComputedStyle(document.documentElement).getPropertyValue('--mono').trim() || 'monospace',
    fontSize: 14,
    lineHeight: 1.15,
    scrollback: 10_000,
    theme: {
      background: '#0f1419',
      foreground: '#c9d1d9',
      cursor: '#58a6ff',
      cursorAccent: '#0f1419',
      selectionBackground: '#264f78',
      black: '#484f58',
      red: '#ff7b72',
      green: '#3fb950',
      yellow: '#d29922',
      blue: '#58a6ff',
      magenta: '#bc8cff',
      cyan: '#39c5cf',
      white: '#b1bac4',
      brightBlack: '#6e7681',
      brightRed: '#ffa198',
      brightGreen: '#56d364',
      brightYellow: '#e3b341',
      brightBlue: '#79c0ff',
      brightMagenta: '#d2a8ff',
      brightCyan: '#56d4dd',
      brightWhite: '#f0f6fc',
    },
  });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(ui.screen);
  fit.fit();
  term.focus();

  window.sandboxkitTerminal = Object.freeze({
    term,
    get sessionId() { return sessionId; },
    get terminalId() { return terminalId; },
    state: () => connection,
  });

  // ---- HTTP API ----

  class ApiError extends Error {
    constructor(status, problem) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || '';
    } catch {
      return '';
    }
  }

  async function readProblem(response) {
    try {
      return await response.json();
    } catch {
      return { title: `${response.status} ${response.statusText}`.trim() };
    }
  }

  /** A fetch with the API key; a 401 shows the key form and retries once a key is entered. */
  async function api(method, path, body) {
    for (;;) {
      const key = storedKey();
      const headers = {};
      if (key) {
        headers.Authorization = `Bearer ${key}`;
      }
      const init = { method, headers, cache: 'no-store' };
      if (body !== undefined) {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(body);
      }
      const response = await fetch(path, init);
      if (response.status === 401) {
        await askForKey(await readProblem(response), key);
        continue;
      }
      if (!response.ok) {
        throw new ApiError(response.status, await readProblem(response));
      }
      return response;
    }
  }

  // Requests that meet a 401 while the form is up all wait for the same key.
  let keyPrompt = null;

  function askForKey(problem, refusedKey) {
    if (keyPrompt) {
      return keyPrompt;
    }
    keyPrompt = new Promise((resolve) => {
      setMessage(refusedKey ? `API key refused: ${problem.detail || problem.title}` : 'this server needs an API key', 'notice');
      ui.keyForm.hidden = false;
      ui.keyInput.value = '';
      ui.keyInput.focus();
      ui.keyForm.onsubmit = (event) => {
        event.preventDefault();
        const key = ui.keyInput.value.trim();
        if (!key) {
          return;
        }
        try {
          sessionStorage.setItem(KEY_STORAGE, key);
        } catch {
          setMessage('cannot keep the API key: sessionStorage is unavailable', 'error');
          return;
        }
        ui.keyInput.value = '';
        ui.keyForm.hidden = true;
        ui.keyForm.onsubmit = null;
        keyPrompt = null;
        setMessage('');
        term.focus();
        resolve();
      };
    });
    return keyPrompt;
  }

  const sessionPath = () => `/v1/sessions/${encodeURIComponent(sessionId)}`;
  const terminalPath = () => `${sessionPath()}/terminals/${encodeURIComponent(terminalId)}`;

  function describe(error) {
    if (error instanceof ApiError) {
      return error.message;
    }
    if (error instanceof TypeError) {
      return 'cannot reach the server';
    }
    return String(error?.message || error);
  }

  // ---- status line ----

  function setConnection(state) {
    connection = state;
    ui.connection.dataset.state = state;
    ui.connection.textContent = CONNECTION_LABELS[state] || state;
  }

  function setMessage(text, kind) {
    ui.message.textContent = text;
    ui.message.title = text;
    if (kind) {
      ui.message.dataset.kind = kind;
    } else {
      delete ui.message.dataset.kind;
    }
  }

  function showSession(session) {
    ui.session.textContent = `session ${session.id.slice(0, 8)}`;
    ui.session.title = `session ${session.id}`;
    const expiry = new Date(session.expiresAt);
    expiresAt = Number.isNaN(expiry.getTime()) ? null : expiry;
    renderExpiry();
  }

  function formatDuration(ms) {
    const seconds = Math.floor(ms / 1000);
    const h = Math.floor(seconds / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    if (h > 0) {
      return `${h}h ${String(m).padStart(2, '0')}m`;
    }
    return m > 0 ? `${m}m ${String(s).padStart(2, '0')}s` : `${s}s`;
  }

  function renderExpiry() {
    if (!expiresAt) {
      ui.expiry.textContent = '';
      ui.expiry.title = '';
      return;
    }
    const left = expiresAt.getTime() - Date.now();
    ui.expiry.textContent = left > 0 ? `expires in ${formatDuration(left)}` : 'expired';
    ui.expiry.title = `idle deadline ${expiresAt.toLocaleString()}`;
  }

  function rememberInUrl() {
    const query = new URLSearchParams({ session: sessionId });
    if (terminalId) {
      query.set('terminal', terminalId);
    }
    history.replaceState(null, '', `${location.pathname}?${query}`);
  }

  // ---- session and terminal ----

  async function fetchSession() {
    return (await api('GET', sessionPath())).json();
  }

  async function refreshSession() {
    if (!sessionId || sessionEnded) {
      return;
    }
    try {
      showSession(await fetchSession());
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        endSession();
      }
      // Anything else is likely a blip: keep the last known expiry rather than alarm.
    }
  }

  function endSession() {
    sessionEnded = true;
    finished = true;
    closeSocket();
    expiresAt = null;
    renderExpiry();
    setConnection('closed');
    setMessage(`session ${sessionId} not found (expired or deleted)`, 'error');
    ui.newTerminal.hidden = true;
    ui.download.disabled = true;
  }

  async function createTerminal() {
    setMessage('starting a terminal…');
    fit.fit();
    const created = await (await api('POST', `${sessionPath()}/terminals`, { cols: term.cols, rows: term.rows })).json();
    terminalId = created.id;
    offset = 0;
    rememberInUrl();
    setMessage('');
  }

  function terminalGone(detail) {
    finished = true;
    closeSocket();
    setConnection('closed');
    setMessage(`terminal ${terminalId} is gone${detail ? `: ${detail}` : ''}`, 'error');
    ui.newTerminal.hidden = false;
  }

  // ---- the terminal's WebSocket ----

  function closeSocket() {
    clearTimeout(reconnectTimer);
    connectAttempt++;
    const current = socket;
    // Cleared first, so the handlers of the socket being closed see it is no longer the current one.
    socket = null;
    if (current && current.readyState <= WebSocket.OPEN) {
      current.close(1000, 'closed by the page');
    }
  }

  function scheduleReconnect(reason) {
    if (finished) {
      return;
    }
    clearTimeout(reconnectTimer);
    const delay = reconnectDelay;
    reconnectDelay = Math.min(reconnectDelay * 2, RECONNECT_MAX_MS);
    setConnection('reconnecting');
    setMessage(`connection lost${reason ? ` (${reason})` : ''}; retrying in ${(delay / 1000).toFixed(1)} s`, 'notice');
    reconnectTimer = setTimeout(connect, delay);
  }

  async function connect() {
    clearTimeout(reconnectTimer);
    if (finished) {
      return;
    }
    const attempt = ++connectAttempt;
    setConnection(connection === 'reconnecting' ? 'reconnecting' : 'connecting');
    let ticket;
    try {
      ticket = await (await api('POST', `${terminalPath()}/tickets`)).json();
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        if (error.problem.code === 'session_not_found') {
          endSession();
        } else {
          terminalGone(error.message);
        }
      } else if (error instanceof ApiError && error.status < 500 && error.status !== 408 && error.status !== 429) {
        // The server refused for a reason a retry does not change.
        finished = true;
        setConnection('closed');
        setMessage(`cannot attach: ${describe(error)}`, 'error');
      } else {
        scheduleReconnect(describe(error));
      }
      return;
    }
    // Superseded while the ticket was on its way (a newer connect, a new terminal, the session's end).
    if (finished || socket || attempt !== connectAttempt) {
      return;
    }

    const since = offset;
    const url = new URL(`${terminalPath()}/ws`, location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.search = new URLSearchParams({ ticket: ticket.ticket, since: String(since) }).toString();
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    socket = ws;
    // Stream offset of the next binary message's first byte; the server says where the replay starts in 'attached'.
    let position = since;
    // The server's 'error' message, if it sent one before closing: a better reason than the close frame's.
    let serverError = '';

    ws.onmessage = (event) => {
      if (ws !== socket) {
        return;
      }
      if (typeof event.data === 'string') {
        onControlMessage(event.data, (start) => { position = start; }, (message) => { serverError = message; });
        return;
      }
      const bytes = new Uint8Array(event.data);
      const start = position;
      position += bytes.length;
      // Only bytes past what the screen already shows: a replay that starts earlier than asked is not shown twice.
      if (position > offset) {
        term.write(start >= offset ? bytes : bytes.subarray(offset - start));
        offset = position;
      }
    };

    ws.onclose = (event) => {
      if (ws !== socket) {
        return;
      }
      socket = null;
      if (finished) {
        return;
      }
      if (event.code === CLOSE_GONE) {
        terminalGone(serverError || event.reason);
        return;
      }
      scheduleReconnect(serverError || event.reason || (event.code === 1006 ? '' : `code ${event.code}`));
    };
  }

  function onControlMessage(text, setPosition, setServerError) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    switch (message.type) {
      case 'attached': {
        const start = Number(message.offset) || 0;
        setPosition(start);
        reconnectDelay = RECONNECT_FIRST_MS;
        setConnection('connected');
        if (message.dropped || start > offset) {
          setMessage('earlier output is no longer kept by the server', 'notice');
          offset = Math.max(offset, start);
        } else {
          setMessage('');
        }
        ui.download.disabled = false;
        // The window may have changed size while disconnected, or another page may have resized the terminal.
        sendResize();
        break;
      }
      case 'exit':
        finished = true;
        setConnection('closed');
        setMessage(`terminal exited (code ${message.exitCode ?? '?'})`);
        ui.newTerminal.hidden = false;
        break;
      case 'error':
        setServerError(message.message || 'the server reported an error');
        setMessage(message.message || 'the server reported an error', 'error');
        break;
      default:
        break;
    }
  }

  function sendBytes(bytes) {
    if (socket && socket.readyState === WebSocket.OPEN && connection === 'connected') {
      socket.send(bytes);
    }
  }

  function sendResize() {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
    }
  }

  // ---- wiring ----

  const utf8 = new TextEncoder();
  term.onData((data) => sendBytes(utf8.encode(data)));
  // Binary strings (some mouse reports) are one byte per character and must not be UTF-8 encoded.
  term.onBinary((data) => sendBytes(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(() => sendResize());

  let resizeTimer = 0;
  new ResizeObserver(() => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => fit.fit(), RESIZE_DEBOUNCE_MS);
  }).observe(ui.frame);

  // Back online: retry now rather than at the end of a long backoff.
  window.addEventListener('online', () => {
    if (connection === 'reconnecting' && !socket) {
      connect();
    }
  });

  ui.newTerminal.addEventListener('click', async () => {
    ui.newTerminal.hidden = true;
    closeSocket();
    finished = false;
    reconnectDelay = RECONNECT_FIRST_MS;
    term.reset();
    try {
      await createTerminal();
      connect();
    } catch (error) {
      setMessage(`cannot start a terminal: ${describe(error)}`, 'error');
      ui.newTerminal.hidden = false;
    }
    term.focus();
  });

  ui.download.addEventListener('click', async () => {
    ui.download.disabled = true;
    try {
      const blob = await (await api('GET', `${terminalPath()}/recording`)).blob();
      const href = URL.createObjectURL(blob);
      const link = document.createElement('a');
      link.href = href;
      link.download = `${terminalId}.cast`;
      document.body.append(link);
      link.click();
      link.remove();
      // Revoked later: the download starts asynchronously from the object URL.
      setTimeout(() => URL.revokeObjectURL(href), 60_000);
    } catch (error) {
      setMessage(`cannot download the recording: ${describe(error)}`, 'error');
    } finally {
      ui.download.disabled = !terminalId || sessionEnded;
      term.focus();
    }
  });

  async function start() {
    try {
      if (sessionId) {
        ui.session.textContent = `session ${sessionId.slice(0, 8)}`;
        ui.session.title = `session ${sessionId}`;
        showSession(await fetchSession());
      } else {
        setMessage('creating a session…');
        const session = await (await api('POST', '/v1/sessions', {})).json();
        sessionId = session.id;
        showSession(session);
        rememberInUrl();
      }
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        endSession();
      } else {
        setConnection('closed');
        setMessage(`cannot open the session: ${describe(error)}`, 'error');
      }
      return;
    }
    setInterval(refreshSession, SESSION_REFRESH_MS);
    setInterval(renderExpiry, 1000);
    try {
      if (!terminalId) {
        await createTerminal();
      }
    } catch (error) {
      setConnection('closed');
      setMessage(`cannot start a terminal: ${describe(error)}`, 'error');
      ui.newTerminal.hidden = false;
      return;
    }
    rememberInUrl();
    connect();
  }

  start();
})();
