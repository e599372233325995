// The API token and the role: asks for a token on a 401, marks the page
// read-only for a viewer token or after a refused (403) action.

import { api, ApiError, getToken, setToken } from './client.js';
import { $, modal, setText } from './dom.js';

/**
 * createAuth({onChange}) → {call, setup, applyRole}.
 * `call` is api() plus those reactions; `onChange` runs after the token was
 * entered or forgotten (reconnect the feed, reload the views).
 */
export function createAuth({ onChange = () => {} } = {}) {
  let viewerRole = false; // api/status said "role": "viewer"
  let forbidden = false; // a state-changing call answered 403
  let promptOpen = false;
  let prompt = null;

  function applyReadOnly() {
    const readOnly = viewerRole || forbidden;
    document.body.classList.toggle('read-only', readOnly);
    $('#readonly-banner').classList.toggle('d-none', !readOnly);
  }

  function askForToken() {
    if (promptOpen) return;
    promptOpen = true;
    setText($('#token-error'), getToken() ? 'The stored token was rejected.' : '');
    $('#token-input').value = '';
    prompt.show();
    setTimeout(() => $('#token-input').focus(), 50);
  }

  function changed() {
    forbidden = false;
    applyReadOnly();
    $('#token-forget').classList.toggle('d-none', !getToken());
    onChange();
  }

  async function call(path, options = {}) {
    try {
      return await api(path, options);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) askForToken();
      if (err instanceof ApiError && err.status === 403 && options.method === 'POST') {
        forbidden = true;
        applyReadOnly();
      }
      throw err;
    }
  }

  function setup() {
    prompt = modal($('#token-modal'));
    $('#token-forget').classList.toggle('d-none', !getToken());
    $('#token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = $('#token-input').value.trim();
      if (!token) {
        setText($('#token-error'), 'Enter a token.');
        return;
      }
      setToken(token);
      promptOpen = false;
      prompt.hide();
      changed();
    });
    $('#token-forget').addEventListener('click', (ev) => {
      ev.preventDefault();
      setToken('');
      changed();
    });
  }

  /** The role from api/status ("admin" | "viewer"). */
  function applyRole(role) {
    viewerRole = role === 'viewer';
    applyReadOnly();
  }

  return { call, setup, applyRole };
}
