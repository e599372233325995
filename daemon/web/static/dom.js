// Small DOM helpers shared by the views. Server strings only ever reach the
// page through el() (text nodes and attributes), never innerHTML.

import { stateClass } from './states.js';

export const $ = (sel, root = document) => root.querySelector(sel);

/** Create an element. Children are nodes or strings (always text, never HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'style') Object.assign(node.style, value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function badge(text, cls) {
  return el('span', { class: `badge ${cls || 'text-bg-secondary'}` }, text);
}

export function stateBadge(state) {
  return badge(state || '?', stateClass(state));
}

/** Set a node's text only when it changed (no needless layout work on progress ticks). */
export function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

/** Show a message in a result slot: kind = success | danger | info. */
export function showResult(node, kind, text) {
  node.replaceChildren(el('div', { class: `alert alert-${kind} py-1 px-2 mb-0` }, text));
}

/** The message for a failed action: the token prompt covers 401, 403 means read-only. */
export function actionError(err) {
  if (err.status === 403) return 'read-only token: actions disabled';
  if (err.status === 0) return 'The daemon is not reachable; try again when it is back.';
  return err.message;
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** `load(isNewest, ...args)` whose answer only the newest call may draw: an older request that answers
 *  after a newer one (a filter typed quickly, an event's reload) asks `isNewest()` and drops its rows. */
export function newestOnly(load) {
  let latest = 0;
  return (...args) => {
    const mine = ++latest;
    return load(() => mine === latest, ...args);
  };
}

/** A Bootstrap modal, or a bare show/hide when Bootstrap's script is absent. */
export function modal(node) {
  let instance = null;
  const get = () => {
    // Bootstrap's bundle is a classic script loaded before the modules.
    if (!instance && window.bootstrap) instance = window.bootstrap.Modal.getOrCreateInstance(node);
    return instance;
  };
  return {
    show() {
      const m = get();
      if (m) m.show();
      else node.classList.add('show', 'd-block');
    },
    hide() {
      const m = get();
      if (m) m.hide();
      else node.classList.remove('show', 'd-block');
    },
  };
}
