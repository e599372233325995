// civitai-daemon GUI: page logic. Talks to the daemon through client.js.
//
// Rules kept throughout:
// - server strings only ever reach the page through textContent / attributes
//   (el() below), never innerHTML;
// - the downloads table only ever holds one page (limit 50), so 10,000
//   downloads in the database cost nothing here;
// - progress events patch the affected cells in place, batched per frame.

import { api, ApiError, Feed, getToken, setToken } from './client.js';

const PAGE_SIZE = 50;
const STATES = ['queued', 'downloading', 'paused', 'completed', 'failed', 'cancelled'];
// which buttons each state allows (SPEC §6 state machine)
const ACTIONS = {
  queued: ['pause', 'cancel'],
  downloading: ['pause', 'cancel'],
  paused: ['resume', 'cancel'],
  failed: ['retry'],
  cancelled: ['retry'],
  completed: [],
};
const ACTION_STYLE = {
  pause: 'btn-outline-warning',
  resume: 'btn-outline-success',
  cancel: 'btn-outline-danger',
  retry: 'btn-outline-primary',
};
const STATE_BADGE = {
  queued: 'text-bg-secondary',
  downloading: 'text-bg-primary',
  paused: 'text-bg-warning',
  completed: 'text-bg-success',
  failed: 'text-bg-danger',
  cancelled: 'bg-body-secondary text-body-emphasis border',
  processing: 'text-bg-info',
  done: 'text-bg-success',
};

const $ = (sel) => document.querySelector(sel);

// ---------------------------------------------------------------- formatting

export function formatBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return '—';
  n = Number(n);
  if (n < 1000) return `${Math.max(0, Math.round(n))} B`;
  const units = ['KB', 'MB', 'GB', 'TB', 'PB'];
  let v = n / 1000;
  let i = 0;
  // 999.96 KB would print as "1000.0 KB": switch unit before rounding does
  while (v >= 999.95 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

export function formatSpeed(bps) {
  if (!bps || !Number.isFinite(Number(bps)) || bps <= 0) return '—';
  return `${formatBytes(bps)}/s`;
}

export function formatEta(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const s = Math.round(Number(seconds));
  if (!Number.isFinite(s) || s < 0) return '—';
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}`;
}

function percent(bytes, total) {
  if (!total || total <= 0) return null;
  return Math.max(0, Math.min(100, Math.floor((bytes / total) * 100)));
}

export function formatProgress(bytes, total) {
  bytes = Number(bytes) || 0;
  if (!total) return bytes ? formatBytes(bytes) : '—';
  return `${formatBytes(bytes)} / ${formatBytes(total)} (${percent(bytes, total)}%)`;
}

function formatTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' });
}

function formatUptime(seconds) {
  const s = Math.floor(Number(seconds) || 0);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return `${m}m`;
}

// --------------------------------------------------------------- DOM helpers

/** Create an element. Children are nodes or strings (always text, never HTML). */
function el(tag, attrs = {}, ...children) {
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

function badge(text, cls) {
  return el('span', { class: `badge ${cls || 'text-bg-secondary'}` }, text);
}

function stateBadge(state) {
  return badge(state || '?', STATE_BADGE[state]);
}

function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

/** Show a message in a result slot: kind = success | danger | info. */
function showResult(node, kind, text) {
  node.replaceChildren(el('div', { class: `alert alert-${kind} py-1 px-2 mb-0` }, text));
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// --------------------------------------------------------------- API + auth

const auth = {
  viewerRole: false, // GET api/status said "role": "viewer"
  forbidden: false, // a state-changing call answered 403
};

/** api() plus the GUI's reactions to 401 (ask for a token) and 403. */
async function call(path, options = {}) {
  try {
    return await api(path, options);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) askForToken();
    if (err instanceof ApiError && err.status === 403 && options.method === 'POST') {
      auth.forbidden = true;
      applyReadOnly();
    }
    throw err;
  }
}

function applyReadOnly() {
  const readOnly = auth.viewerRole || auth.forbidden;
  document.body.classList.toggle('read-only', readOnly);
  $('#readonly-banner').classList.toggle('d-none', !readOnly);
}

let tokenModal = null;
let tokenModalOpen = false;

function modalApi() {
  // Bootstrap's bundle is a classic script loaded before this module.
  if (!tokenModal && window.bootstrap) {
    tokenModal = window.bootstrap.Modal.getOrCreateInstance($('#token-modal'));
  }
  return tokenModal;
}

function askForToken() {
  if (tokenModalOpen) return;
  tokenModalOpen = true;
  setText($('#token-error'), getToken() ? 'The stored token was rejected.' : '');
  $('#token-input').value = '';
  const modal = modalApi();
  if (modal) modal.show();
  else $('#token-modal').classList.add('show', 'd-block'); // no Bootstrap JS
  setTimeout(() => $('#token-input').focus(), 50);
}

function hideTokenModal() {
  tokenModalOpen = false;
  const modal = modalApi();
  if (modal) modal.hide();
  else $('#token-modal').classList.remove('show', 'd-block');
}

function tokenChanged() {
  auth.forbidden = false;
  applyReadOnly();
  $('#token-forget').classList.toggle('d-none', !getToken());
  feed.reconnect();
  loadAll();
}

function setupToken() {
  $('#token-forget').classList.toggle('d-none', !getToken());
  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('#token-input').value.trim();
    if (!token) {
      setText($('#token-error'), 'Enter a token.');
      return;
    }
    setToken(token);
    hideTokenModal();
    tokenChanged();
  });
  $('#token-forget').addEventListener('click', (ev) => {
    ev.preventDefault();
    setToken('');
    tokenChanged();
  });
}

// ------------------------------------------------------------ status / counts

function applyStatus(status) {
  if (!status || typeof status !== 'object') return;
  if ('role' in status) {
    auth.viewerRole = status.role === 'viewer';
    applyReadOnly();
  }
  const bits = [];
  if (status.version) bits.push(`v${status.version}`);
  if (status.uptime !== undefined) bits.push(`up ${formatUptime(status.uptime)}`);
  if (status.workers !== undefined) bits.push(`${status.workers} workers`);
  if (status.throttle) bits.push(`cap ${formatSpeed(status.throttle)}`);
  setText($('#daemon-version'), bits.join(' · '));

  const counts = status.counts || {};
  const box = $('#counts');
  box.replaceChildren(...STATES.map((state) => {
    const n = counts[state] ?? 0;
    const b = el('button', {
      type: 'button',
      class: `badge border-0 count-badge ${n ? STATE_BADGE[state] : 'bg-body-secondary text-body-secondary border'}`,
      title: `show ${state} downloads`,
      dataset: { state },
    }, `${state} ${n}`);
    return b;
  }));
  // the filter select shows the counts too
  for (const option of $('#state-filter').options) {
    if (option.value) option.textContent = `${option.value} (${counts[option.value] ?? 0})`;
  }
  // active downloads carry live numbers: patch their rows
  for (const a of status.active || []) queueProgress(a);
}

async function loadStatus() {
  try {
    applyStatus(await call('api/status'));
  } catch {
    /* shown through the connection banner / token modal */
  }
}
const refreshStatusSoon = debounce(loadStatus, 1000);

// ------------------------------------------------------------ downloads table

const view = { offset: 0, state: '', total: 0 };
let pageRequest = 0; // drops answers to requests that a newer one replaced

function tbody() {
  return $('#downloads tbody');
}

function rowFor(id) {
  return tbody().querySelector(`tr[data-id="${CSS.escape(String(id))}"]`);
}

function displayName(d) {
  if (d.filename) return d.filename;
  if (d.url) {
    try {
      const last = new URL(d.url).pathname.split('/').filter(Boolean).pop();
      if (last) return decodeURIComponent(last);
    } catch { /* fall through */ }
  }
  return d.modelVersionId ? `version ${d.modelVersionId}` : `download ${d.id}`;
}

function modelLabel(d) {
  const parts = [];
  if (d.model_name) parts.push(d.model_name);
  if (d.version_name) parts.push(d.version_name);
  if (!parts.length && d.modelVersionId) parts.push(`version ${d.modelVersionId}`);
  if (!parts.length && d.modelId) parts.push(`model ${d.modelId}`);
  return parts.join(' · ') || '—';
}

function buildProgress(d) {
  const pct = percent(d.bytes || 0, d.total);
  const indeterminate = d.state === 'downloading' && pct === null;
  const barClass = {
    downloading: 'progress-bar-striped progress-bar-animated',
    completed: 'bg-success',
    failed: 'bg-danger',
    paused: 'bg-warning',
    cancelled: 'bg-secondary',
  }[d.state] || '';
  const width = d.state === 'completed' ? 100 : indeterminate ? 100 : (pct ?? 0);
  const bar = el('div', {
    class: `progress-bar ${barClass}`,
    style: { width: `${width}%` },
  });
  return el('div', { class: 'cell-progress' },
    el('div', {
      class: 'progress',
      role: 'progressbar',
      'aria-valuemin': 0,
      'aria-valuemax': 100,
      'aria-valuenow': pct ?? 0,
      'aria-label': 'progress',
    }, bar),
    el('div', { class: 'progress-text small text-body-secondary' }, formatProgress(d.bytes, d.total)));
}

function buildActions(d) {
  const buttons = (ACTIONS[d.state] || []).map((action) => el('button', {
    type: 'button',
    class: `btn btn-sm ${ACTION_STYLE[action]}`,
    dataset: { action, id: d.id },
    title: `${action} download ${d.id}`,
  }, action));
  return el('div', { class: 'btn-group btn-group-sm' }, buttons);
}

// ------------------------------------------------------------------ previews

const NSFW_KEY = 'civitai-daemon-show-nsfw';
const NSFW_MIN = 4; // Civitai nsfwLevel: 1 PG, 2 PG-13, 4 R, 8 X, 16 XXX
const revealed = new Set(); // ids whose NSFW preview was clicked open on this page
const downloads = new Map(); // id → the latest download object shown in the table

function showNsfw() {
  try {
    return localStorage.getItem(NSFW_KEY) === '1';
  } catch {
    return false;
  }
}

function isNsfw(d) {
  return Number(d.nsfw_level) >= NSFW_MIN;
}

/** The daemon's own preview URL; <img> cannot send headers, so the token rides along as ?token=. */
function previewUrl(d) {
  const url = new URL(d.preview, location.href);
  const token = getToken();
  if (token) url.searchParams.set('token', token);
  return url.toString();
}

function buildPreview(d, cls) {
  if (!d.preview) return null;
  const nsfw = isNsfw(d);
  const blurred = nsfw && !showNsfw() && !revealed.has(String(d.id));
  const img = el('img', {
    src: previewUrl(d),
    alt: `preview of ${modelLabel(d)}`,
    class: `${cls}${blurred ? ' nsfw-blur' : ''}`,
    title: blurred ? 'NSFW preview: click to show' : null,
    referrerpolicy: 'no-referrer',
    dataset: { id: d.id, nsfw: nsfw ? '1' : '0' },
  });
  return el('span', { class: `preview-frame${cls === 'preview-thumb' ? ' in-row' : ''}` }, img);
}

/** Un-blur one preview (a click on it); returns whether it was blurred. */
function reveal(img) {
  if (!img.classList.contains('nsfw-blur')) return false;
  revealed.add(String(img.dataset.id));
  img.classList.remove('nsfw-blur');
  img.removeAttribute('title');
  return true;
}

function applyNsfwSetting() {
  const show = showNsfw();
  for (const img of document.querySelectorAll('img[data-nsfw="1"]')) {
    const blurred = !show && !revealed.has(String(img.dataset.id));
    img.classList.toggle('nsfw-blur', blurred);
    if (blurred) img.title = 'NSFW preview: click to show';
    else img.removeAttribute('title');
  }
}

function setupNsfwToggle() {
  const toggle = $('#nsfw-toggle');
  toggle.checked = showNsfw();
  toggle.addEventListener('change', () => {
    try {
      if (toggle.checked) localStorage.setItem(NSFW_KEY, '1');
      else localStorage.removeItem(NSFW_KEY);
    } catch { /* no storage: the switch still applies to this page */ }
    if (!toggle.checked) revealed.clear();
    applyNsfwSetting();
  });
}

// ------------------------------------------------------------- detail view

/** Plain text of Civitai's HTML description, cut to about `max` characters (never parsed into the page). */
export function excerpt(html, max = 300) {
  if (!html) return '';
  // DOMParser documents have no browsing context: no scripts run, no images load
  const doc = new DOMParser().parseFromString(String(html), 'text/html');
  for (const node of doc.body.querySelectorAll('script, style, template, noscript, iframe, object')) node.remove();
  for (const node of doc.body.querySelectorAll('p, br, li, div, h1, h2, h3, h4, h5, h6, tr')) node.after(' ');
  const text = (doc.body.textContent || '').replace(/\s+/g, ' ').trim();
  if (text.length <= max) return text;
  const cut = text.slice(0, max);
  const space = cut.lastIndexOf(' ');
  return `${(space > max * 0.6 ? cut.slice(0, space) : cut).trimEnd()}…`;
}

function civitaiPage(modelId, versionId) {
  if (!modelId) return null;
  const url = new URL(`https://civitai.com/models/${encodeURIComponent(modelId)}`);
  if (versionId) url.searchParams.set('modelVersionId', versionId);
  return url.toString();
}

let detailModal = null;
let detailRequest = 0;

function fillDetails(d, info) {
  const model = (info && info.model) || {};
  const modelId = d.modelId ?? (info && info.modelId);
  const versionId = d.modelVersionId ?? (info && info.id);
  setText($('#detail-title'), d.model_name || model.name
    ? [d.model_name || model.name, d.version_name || (info && info.name)].filter(Boolean).join(' · ')
    : displayName(d));
  $('#detail-preview-box').replaceChildren(buildPreview(d, 'detail-preview') || el('div',
    { class: 'small text-body-secondary py-4' }, 'no preview image'));
  const badges = [];
  const base = d.base_model || (info && info.baseModel);
  const type = d.model_type || model.type;
  if (base) badges.push(badge(base, 'text-bg-info'));
  if (type) badges.push(badge(type, 'text-bg-secondary'));
  if (isNsfw(d)) badges.push(badge(`NSFW level ${d.nsfw_level}`, 'text-bg-danger'));
  badges.push(stateBadge(d.state));
  $('#detail-badges').replaceChildren(...badges);
  const words = info && Array.isArray(info.trainedWords) ? info.trainedWords.filter((w) => typeof w === 'string') : [];
  $('#detail-trained-words').replaceChildren(...(words.length
    ? words.map((w) => el('code', { class: 'trained-word border rounded px-1' }, w))
    : [el('span', { class: 'text-body-secondary' }, info ? 'none' : '—')]));
  setText($('#detail-description'), excerpt(info && (info.description || model.description)) || '—');
  const link = $('#detail-link');
  const page = civitaiPage(modelId, versionId);
  if (page) {
    link.href = page;
    setText(link, page);
  } else {
    link.removeAttribute('href');
    setText(link, '—');
  }
  setText($('#detail-sha256'), d.sha256 || d.expected_sha256 || '—');
  setText($('#detail-path'), d.path || '—');
}

async function openDetails(id) {
  const request = ++detailRequest;
  let d = downloads.get(String(id));
  if (!d) {
    try {
      d = await call(`api/downloads/${encodeURIComponent(id)}`);
    } catch {
      return;
    }
  }
  if (request !== detailRequest) return;
  fillDetails(d, null);
  setText($('#detail-note'), d.modelId || d.modelVersionId ? 'Loading Civitai metadata…' : '');
  if (!detailModal && window.bootstrap) detailModal = window.bootstrap.Modal.getOrCreateInstance($('#detail-modal'));
  if (detailModal) detailModal.show();
  else $('#detail-modal').classList.add('show', 'd-block');
  let info = null;
  try {
    info = await call(`api/downloads/${encodeURIComponent(id)}/info`);
  } catch (err) {
    if (request !== detailRequest) return;
    setText($('#detail-note'), err.status === 404 ? 'No Civitai metadata stored for this download.'
      : `Could not load the metadata: ${err.message}`);
    return;
  }
  if (request !== detailRequest) return;
  fillDetails(d, info);
  setText($('#detail-note'), 'Stored when the download was resolved (the .civitai.info sidecar).');
}

function setupDetails() {
  $('#detail-preview-box').addEventListener('click', (ev) => {
    const img = ev.target.closest('img');
    if (!img) return;
    if (reveal(img)) {
      const thumb = rowFor(img.dataset.id)?.querySelector('img.preview-thumb');
      if (thumb) reveal(thumb);
    }
  });
}

// ------------------------------------------------------------ table rows

function buildRow(d) {
  downloads.set(String(d.id), d);
  const live = d.state === 'downloading';
  const sub = [];
  if (d.error) sub.push(el('div', { class: 'small text-danger text-wrap cell-error' }, d.error));
  if (d.state === 'queued' && d.not_before) {
    sub.push(el('div', { class: 'small text-body-secondary' }, `waits until ${formatTime(d.not_before)}`));
  }
  if (d.manifest) sub.push(el('div', { class: 'small text-body-secondary' }, d.manifest));
  const modelBits = [];
  if (d.base_model) modelBits.push(badge(d.base_model, 'text-bg-info fw-normal'));
  if (d.model_type) modelBits.push(badge(d.model_type, 'text-bg-secondary fw-normal'));
  return el('tr', { dataset: { id: d.id, state: d.state } },
    el('td', { class: 'text-end text-body-secondary d-none d-md-table-cell' }, d.id),
    el('td', { class: 'cell-file' },
      el('div', { class: 'd-flex gap-2 align-items-center' },
        buildPreview(d, 'preview-thumb'),
        el('div', { class: 'min-w-0' },
          el('button', {
            type: 'button',
            class: 'btn btn-link p-0 file-name file-name-link',
            title: `details: ${d.path || d.url || ''}`,
            dataset: { action: 'details', id: d.id },
          }, displayName(d)),
          sub))),
    el('td', { class: 'cell-model d-none d-lg-table-cell small' },
      el('div', { class: 'model-label' }, modelLabel(d)),
      modelBits.length ? el('div', { class: 'd-flex flex-wrap gap-1 mt-1' }, modelBits) : null),
    el('td', { class: 'cell-state' }, stateBadge(d.state)),
    el('td', { class: 'col-progress' }, buildProgress(d)),
    el('td', { class: 'cell-speed text-end text-nowrap' }, live ? formatSpeed(d.speed) : '—'),
    el('td', { class: 'cell-eta text-end text-nowrap' }, live ? formatEta(d.eta) : '—'),
    el('td', { class: 'cell-size text-end text-nowrap d-none d-md-table-cell' }, formatBytes(d.total)),
    el('td', { class: 'cell-actions text-end text-nowrap action-only' }, buildActions(d)));
}

function renderEmpty() {
  if (tbody().querySelector('tr[data-id]')) {
    tbody().querySelector('tr.empty-row')?.remove();
    return;
  }
  if (!tbody().querySelector('tr.empty-row')) {
    const text = view.state ? `No ${view.state} downloads.` : 'No downloads yet.';
    tbody().replaceChildren(el('tr', { class: 'empty-row' },
      el('td', { colspan: 9, class: 'text-center text-body-secondary py-4' }, text)));
  }
}

function renderPager(shown) {
  const count = shown ?? tbody().querySelectorAll('tr[data-id]').length;
  const info = view.total === 0 || count === 0
    ? `${view.total} total`
    : `${view.offset + 1}–${view.offset + count} of ${view.total} total`;
  setText($('#page-info'), info);
  $('#page-prev').disabled = view.offset === 0;
  $('#page-next').disabled = view.offset + PAGE_SIZE >= view.total;
}

async function loadDownloads() {
  const request = ++pageRequest;
  const params = new URLSearchParams({ limit: PAGE_SIZE, offset: view.offset });
  if (view.state) params.set('state', view.state);
  let page;
  try {
    page = await call(`api/downloads?${params}`);
  } catch (err) {
    if (request !== pageRequest) return;
    if (err.status && err.status !== 401) {
      const box = $('#downloads-error');
      box.textContent = `Could not load downloads: ${err.message}`;
      box.classList.remove('d-none');
    }
    return;
  }
  if (request !== pageRequest) return; // a newer page/filter was asked meanwhile
  $('#downloads-error').classList.add('d-none');
  view.total = Number(page.total) || 0;
  const items = Array.isArray(page.items) ? page.items : [];
  if (!items.length && view.offset > 0 && view.total > 0) {
    // the page we were on emptied (items finished/removed): step back
    view.offset = Math.max(0, Math.floor((view.total - 1) / PAGE_SIZE) * PAGE_SIZE);
    loadDownloads();
    return;
  }
  pendingProgress.clear(); // the fresh rows already carry the latest numbers
  downloads.clear();
  tbody().replaceChildren(...items.map(buildRow));
  renderEmpty();
  renderPager(items.length);
}
const reloadPageSoon = debounce(loadDownloads, 300);

/** A download event carried a full object: fix its row, keeping one page. */
function upsertDownload(d) {
  if (d === null || typeof d !== 'object' || d.id === undefined) return;
  const matches = !view.state || d.state === view.state;
  const row = rowFor(d.id);
  if (row) {
    if (matches) {
      pendingProgress.delete(String(d.id));
      row.replaceWith(buildRow(d));
    } else {
      // left the filtered view: drop it now, refill the page shortly
      row.remove();
      view.total = Math.max(0, view.total - 1);
      renderEmpty();
      renderPager();
      reloadPageSoon();
    }
    return;
  }
  if (!matches) return;
  const first = tbody().querySelector('tr[data-id]');
  const newest = !first || Number(d.id) > Number(first.dataset.id);
  if (newest && view.offset === 0) {
    // newest first: a new download goes on top, the last row drops off
    tbody().prepend(buildRow(d));
    const rows = tbody().querySelectorAll('tr[data-id]');
    for (let i = PAGE_SIZE; i < rows.length; i += 1) rows[i].remove();
    view.total += 1;
    renderEmpty();
    renderPager();
  } else if (newest) {
    view.total += 1; // lands on page 1; this page's rows shift on next load
    renderPager();
  } else {
    reloadPageSoon(); // an older download entered this filtered view
  }
}

// progress events are coalesced: at most one DOM pass per animation frame
const pendingProgress = new Map();
let progressFrame = 0;

function queueProgress(p) {
  if (!p || p.id === undefined) return;
  pendingProgress.set(String(p.id), p);
  if (!progressFrame) {
    progressFrame = window.requestAnimationFrame(flushProgress);
  }
}

function flushProgress() {
  progressFrame = 0;
  for (const p of pendingProgress.values()) applyProgress(p);
  pendingProgress.clear();
}

function applyProgress(p) {
  const row = rowFor(p.id);
  if (!row) return;
  const total = p.total ?? null;
  const pct = percent(p.bytes || 0, total);
  const bar = row.querySelector('.progress-bar');
  if (bar) {
    bar.style.width = `${pct === null ? 100 : pct}%`;
    bar.parentElement.setAttribute('aria-valuenow', pct ?? 0);
  }
  setText(row.querySelector('.progress-text'), formatProgress(p.bytes, total));
  // speed/ETA only mean something while the download runs
  const live = row.dataset.state === 'downloading';
  setText(row.querySelector('.cell-speed'), live ? formatSpeed(p.speed) : '—');
  setText(row.querySelector('.cell-eta'), live ? formatEta(p.eta) : '—');
  if (total) setText(row.querySelector('.cell-size'), formatBytes(total));
}

async function runAction(button) {
  const { action, id } = button.dataset;
  button.disabled = true;
  const errorBox = $('#downloads-error');
  try {
    const result = await call(`api/downloads/${encodeURIComponent(id)}/${action}`, { method: 'POST' });
    errorBox.classList.add('d-none');
    if (result && result.state) upsertDownload(result);
    else upsertDownload(await call(`api/downloads/${encodeURIComponent(id)}`));
    refreshStatusSoon();
  } catch (err) {
    button.disabled = false;
    if (err.status === 401) return; // the token prompt says it all
    errorBox.textContent = err.status === 403
      ? 'read-only token: actions disabled'
      : `${action} #${id}: ${err.message}`;
    errorBox.classList.remove('d-none');
    if (err.status === 409 || err.status === 404) reloadPageSoon(); // our view was stale
  }
}

function setupDownloads() {
  tbody().addEventListener('click', (ev) => {
    const img = ev.target.closest('img.preview-thumb');
    if (img) {
      if (!reveal(img)) openDetails(img.dataset.id); // first click on a blurred preview only shows it
      return;
    }
    const details = ev.target.closest('button[data-action="details"]');
    if (details) {
      openDetails(details.dataset.id);
      return;
    }
    const button = ev.target.closest('button[data-action]');
    if (button && !button.disabled) runAction(button);
  });
  $('#state-filter').addEventListener('change', (ev) => {
    view.state = ev.target.value;
    view.offset = 0;
    loadDownloads();
  });
  $('#counts').addEventListener('click', (ev) => {
    const b = ev.target.closest('[data-state]');
    if (!b) return;
    view.state = view.state === b.dataset.state ? '' : b.dataset.state;
    $('#state-filter').value = view.state;
    view.offset = 0;
    loadDownloads();
  });
  $('#page-prev').addEventListener('click', () => {
    view.offset = Math.max(0, view.offset - PAGE_SIZE);
    loadDownloads();
  });
  $('#page-next').addEventListener('click', () => {
    if (view.offset + PAGE_SIZE < view.total) view.offset += PAGE_SIZE;
    loadDownloads();
  });
}

// ------------------------------------------------------------------ add form

/** Build the POST api/download body from the form; throws on bad input. */
function addFormBody() {
  const target = $('#add-target').value.trim();
  if (!target) throw new Error('Enter a URL or a model version id.');
  const body = {};
  if (/^\d+$/.test(target)) body.modelVersionId = Number.parseInt(target, 10);
  else if (/^urn:air:/i.test(target)) body.air = target;
  else body.url = target;
  const sha = $('#add-sha256').value.trim();
  if (sha) body.sha256 = sha;
  const filename = $('#add-filename').value.trim();
  if (filename) body.filename = filename;
  const priority = $('#add-priority').value.trim();
  if (priority) {
    if (!/^-?\d+$/.test(priority)) throw new Error('Priority must be a whole number.');
    body.priority = Number.parseInt(priority, 10);
  }
  const subdir = $('#add-subdir').value.trim();
  if (subdir) body.subdir = subdir;
  return body;
}

function setupAddForm() {
  const form = $('#add-form');
  const result = $('#add-result');
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let body;
    try {
      body = addFormBody();
    } catch (err) {
      showResult(result, 'danger', err.message);
      return;
    }
    const submit = $('#add-submit');
    submit.disabled = true;
    try {
      const answer = await call('api/download', { method: 'POST', body });
      showResult(result, 'success', `Queued as download #${answer && answer.id}.`);
      form.reset();
      refreshStatusSoon();
    } catch (err) {
      const text = err.status === 403 ? 'read-only token: actions disabled'
        : err.status === 0 ? 'The daemon is not reachable; try again when it is back.'
          : err.message;
      showResult(result, 'danger', text);
    } finally {
      submit.disabled = false;
    }
  });
}

// ------------------------------------------------------------------- metrics

async function loadMetrics() {
  let m;
  try {
    m = await call('api/metrics');
  } catch {
    return;
  }
  if (!m) return;
  const num = (v) => (v === null || v === undefined ? '—' : Number(v).toLocaleString());
  setText($('#metric-completed'), num(m.completed));
  setText($('#metric-failed'), num(m.failed));
  setText($('#metric-bytes'), formatBytes(m.bytes ?? 0));
  setText($('#metric-speed'), formatSpeed(m.average_speed));
  const rate = Number(m.success_rate);
  const finished = (Number(m.completed) || 0) + (Number(m.failed) || 0);
  setText($('#metric-success'),
    Number.isFinite(rate) && (finished > 0 || rate > 0) ? `${(rate * 100).toFixed(1)}%` : '—');
  const extra = [];
  if (m.downloads !== undefined) extra.push(`${num(m.downloads)} downloads`);
  if (m.retries !== undefined) extra.push(`${num(m.retries)} retries`);
  if (m.hash_mismatches !== undefined) extra.push(`${num(m.hash_mismatches)} hash mismatches`);
  setText($('#metric-extra'), extra.join(' · '));
}

// ----------------------------------------------------------------- manifests

function manifestItemsCell(items) {
  if (typeof items === 'number') return String(items);
  if (!Array.isArray(items)) return '—';
  // result items: summarise by status ("2 completed, 1 failed")
  const byStatus = {};
  for (const item of items) {
    const s = (item && (item.status || item.state)) || 'pending';
    byStatus[s] = (byStatus[s] || 0) + 1;
  }
  const parts = Object.entries(byStatus).map(([s, n]) => `${n} ${s}`);
  return parts.length ? `${items.length}: ${parts.join(', ')}` : '0';
}

function buildManifestRow(m) {
  const errors = Array.isArray(m.errors) ? m.errors : (m.errors ? [String(m.errors)] : []);
  const itemErrors = Array.isArray(m.items)
    ? m.items.filter((i) => i && i.error).map((i) => `items[${i.index ?? '?'}]: ${i.error}`)
    : [];
  const allErrors = [...errors, ...itemErrors];
  return el('tr', { dataset: { manifest: m.manifest ?? '' } },
    el('td', { class: 'text-break' },
      el('div', {}, m.manifest ?? '—'),
      allErrors.length
        ? el('ul', { class: 'manifest-errors small text-danger mb-0 ps-3' },
          allErrors.slice(0, 10).map((e) => el('li', {}, e)),
          allErrors.length > 10 ? el('li', {}, `… ${allErrors.length - 10} more`) : null)
        : null),
    el('td', { class: 'manifest-status' }, stateBadge(m.status)),
    el('td', { class: 'small' }, manifestItemsCell(m.items)),
    el('td', { class: 'small text-nowrap d-none d-sm-table-cell' }, formatTime(m.received_at)),
    el('td', { class: 'small text-nowrap d-none d-sm-table-cell' }, formatTime(m.finished_at)));
}

async function loadManifests() {
  let page;
  try {
    page = await call('api/manifests?limit=50&offset=0');
  } catch {
    return;
  }
  const items = (page && Array.isArray(page.items)) ? page.items : [];
  const body = $('#manifests tbody');
  body.replaceChildren(...items.map(buildManifestRow));
  if (!items.length) {
    body.append(el('tr', {}, el('td', { colspan: 5, class: 'text-center text-body-secondary py-3' },
      'No manifests yet.')));
  }
  const total = page && page.total !== undefined ? page.total : items.length;
  setText($('#manifests-total'), total > items.length ? `latest ${items.length} of ${total}` : `${total} total`);
}

// ------------------------------------------------------------- model updates

function buildUpdateRow(u) {
  const model = u.model_name ? `${u.model_name}` : `model ${u.modelId ?? '?'}`;
  const version = u.version_name ? `${u.version_name}` : `version ${u.modelVersionId ?? '?'}`;
  return el('tr', { dataset: { modelVersionId: u.modelVersionId ?? '' } },
    el('td', {}, el('div', {}, model),
      u.modelId !== undefined ? el('div', { class: 'small text-body-secondary' }, `#${u.modelId}`) : null),
    el('td', {}, el('div', {}, version),
      el('div', { class: 'small text-body-secondary' }, `#${u.modelVersionId ?? '?'}`)),
    el('td', { class: 'small d-none d-sm-table-cell' }, u.previous_version_id ? `#${u.previous_version_id}` : '—'),
    el('td', { class: 'small text-nowrap d-none d-md-table-cell' }, formatTime(u.detected_at)),
    el('td', {}, u.state ? badge(u.state, STATE_BADGE[u.state] || 'text-bg-info') : '—'),
    el('td', { class: 'text-end action-only' },
      u.modelVersionId ? el('button', {
        type: 'button',
        class: 'btn btn-sm btn-outline-primary',
        dataset: { action: 'download-update', versionId: u.modelVersionId },
      }, 'Download') : null));
}

async function loadUpdates() {
  let page;
  try {
    page = await call('api/updates');
  } catch {
    return;
  }
  const items = (page && Array.isArray(page.items)) ? page.items : (Array.isArray(page) ? page : []);
  const body = $('#updates tbody');
  body.replaceChildren(...items.map(buildUpdateRow));
  if (!items.length) {
    body.append(el('tr', {}, el('td', { colspan: 6, class: 'text-center text-body-secondary py-3' },
      'No updates detected.')));
  }
}
const reloadUpdatesSoon = debounce(loadUpdates, 300);

/** One line from the check's summary object, whatever fields it has. */
function summarise(summary) {
  if (!summary || typeof summary !== 'object') return 'Check finished.';
  const parts = [];
  for (const [key, value] of Object.entries(summary)) {
    if (Array.isArray(value)) parts.push(`${key.replaceAll('_', ' ')}: ${value.length}`);
    else if (value === null || typeof value !== 'object') parts.push(`${key.replaceAll('_', ' ')}: ${value}`);
  }
  return parts.length ? `Check finished — ${parts.join(', ')}.` : 'Check finished.';
}

function setupUpdates() {
  const result = $('#updates-result');
  $('#check-updates').addEventListener('click', async (ev) => {
    const button = ev.currentTarget;
    button.disabled = true;
    setText(button, 'Checking…');
    try {
      showResult(result, 'success', summarise(await call('api/updates/check', { method: 'POST' })));
      loadUpdates();
    } catch (err) {
      if (err.status !== 401) {
        showResult(result, 'danger', err.status === 403 ? 'read-only token: actions disabled' : err.message);
      }
    } finally {
      button.disabled = false;
      setText(button, 'Check now');
    }
  });
  $('#updates tbody').addEventListener('click', async (ev) => {
    const button = ev.target.closest('button[data-action="download-update"]');
    if (!button) return;
    button.disabled = true;
    const versionId = Number.parseInt(button.dataset.versionId, 10);
    try {
      const answer = await call('api/download', { method: 'POST', body: { modelVersionId: versionId } });
      showResult(result, 'success', `Version ${versionId} queued as download #${answer && answer.id}.`);
      refreshStatusSoon();
    } catch (err) {
      button.disabled = false;
      if (err.status !== 401) {
        showResult(result, 'danger', err.status === 403 ? 'read-only token: actions disabled' : err.message);
      }
    }
  });
}

// ---------------------------------------------------------------- live feed

const refreshHistorySoon = debounce(() => {
  loadMetrics();
  loadManifests();
}, 1000);

function loadAll() {
  loadStatus();
  loadDownloads();
  loadMetrics();
  loadManifests();
  loadUpdates();
}

function onEvent({ event, data }) {
  if (event === 'snapshot') {
    // (re)connected: whatever happened while we were away is in the API
    applyStatus(data);
    loadDownloads();
    refreshHistorySoon();
    reloadUpdatesSoon();
    return;
  }
  if (event === 'download.progress') {
    queueProgress(data);
    return;
  }
  if (event.startsWith('download.')) {
    if (data && data.state) upsertDownload(data);
    else reloadPageSoon();
    refreshStatusSoon();
    if (event === 'download.completed' || event === 'download.failed') refreshHistorySoon();
    return;
  }
  if (event.startsWith('manifest.')) {
    refreshHistorySoon();
    return;
  }
  if (event === 'model.update') reloadUpdatesSoon();
}

function onConnState(state) {
  const badgeEl = $('#conn-state');
  const look = {
    live: ['live', 'text-bg-success'],
    connecting: ['connecting…', 'text-bg-secondary'],
    down: ['offline', 'text-bg-danger'],
  }[state];
  badgeEl.textContent = look[0];
  badgeEl.className = `badge ${look[1]}`;
  $('#conn-banner').classList.toggle('d-none', state !== 'down');
}

// -------------------------------------------------------------------- start

function followColourScheme() {
  const query = window.matchMedia('(prefers-color-scheme: dark)');
  const apply = () => document.documentElement.setAttribute('data-bs-theme', query.matches ? 'dark' : 'light');
  apply();
  query.addEventListener('change', apply);
}

followColourScheme();
setupToken();
setupNsfwToggle();
setupDetails();
setupDownloads();
setupAddForm();
setupUpdates();
const feed = new Feed({ onEvent, onState: onConnState });
loadAll();
