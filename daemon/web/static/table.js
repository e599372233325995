// The downloads table: one page of rows (PAGE_SIZE), the state filter and
// count badges, live progress patched in place (batched per animation frame),
// and the queue action buttons the server allows for each state.
//
// Extension points for other views of a row (e.g. segments):
//   table.decorate((row, d) => ...)     after a row is built from a download object
//   table.onProgress((row, p) => ...)   after a progress event patched a row

import { $, el, badge, stateBadge, setText, debounce, actionError, newestOnly } from './dom.js';
import {
  displayName, formatBytes, formatEta, formatProgress, formatSpeed, formatTime, modelLabel, percent,
} from './format.js';
import { actionClass, stateClass, vocabulary } from './states.js';

export const PAGE_SIZE = 50;

const BAR_CLASS = {
  downloading: 'progress-bar-striped progress-bar-animated',
  completed: 'bg-success',
  failed: 'bg-danger',
  paused: 'bg-warning',
  cancelled: 'bg-secondary',
};

function buildProgress(d) {
  const pct = percent(d.bytes || 0, d.total);
  const indeterminate = d.state === 'downloading' && pct === null;
  const width = d.state === 'completed' || indeterminate ? 100 : (pct ?? 0);
  const bar = el('div', { class: `progress-bar ${BAR_CLASS[d.state] || ''}`, style: { width: `${width}%` } });
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

/**
 * createDownloadsTable({call, previews, openDetails, refreshStatus}) → the table.
 * `call` is the authenticated api(); `openDetails(id)` shows one download.
 */
export function createDownloadsTable({ call, previews, openDetails, refreshStatus }) {
  const view = { offset: 0, state: '', total: 0 };
  let vocab = vocabulary(null);
  // Feed events and progress that came while the newest page request was out, as [fn, data]:
  // its answer comes on another connection, so it may have been read before them and land
  // after them. Applied again on top of the answer, in order (null while no request is out).
  let missed = null;
  const shown = new Map(); // id → the latest download object in the table
  const pendingProgress = new Map();
  let progressFrame = 0;
  const decorators = [];
  const progressHooks = [];

  const tbody = () => $('#downloads tbody');
  const rowFor = (id) => tbody().querySelector(`tr[data-id="${CSS.escape(String(id))}"]`);

  function buildActions(d) {
    const buttons = vocab.actionsFor(d.state).map((action) => el('button', {
      type: 'button',
      class: `btn btn-sm ${actionClass(action)}`,
      dataset: { action, id: d.id },
      title: `${action} download ${d.id}`,
    }, action));
    return el('div', { class: 'btn-group btn-group-sm' }, buttons);
  }

  function buildRow(d) {
    shown.set(String(d.id), d);
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
    const row = el('tr', { dataset: { id: d.id, state: d.state } },
      el('td', { class: 'text-end text-body-secondary d-none d-md-table-cell' }, d.id),
      el('td', { class: 'cell-file' },
        el('div', { class: 'd-flex gap-2 align-items-center' },
          previews.build(d, 'preview-thumb'),
          el('div', { class: 'min-w-0 cell-file-text' },
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
    for (const fn of decorators) fn(row, d);
    return row;
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

  function renderPager(count = tbody().querySelectorAll('tr[data-id]').length) {
    const info = view.total === 0 || count === 0
      ? `${view.total} total`
      : `${view.offset + 1}–${view.offset + count} of ${view.total} total`;
    setText($('#page-info'), info);
    $('#page-prev').disabled = view.offset === 0;
    $('#page-next').disabled = view.offset + PAGE_SIZE >= view.total;
  }

  // Only the newest request's answer draws (dom.newestOnly): an older one a newer page/filter replaced is dropped.
  const load = newestOnly(async (isNewest) => {
    const since = [];
    missed = since;
    const params = new URLSearchParams({ limit: PAGE_SIZE, offset: view.offset });
    if (view.state) params.set('state', view.state);
    let page;
    try {
      page = await call(`api/downloads?${params}`);
    } catch (err) {
      if (!isNewest()) return;
      missed = null; // the rows stay as the events left them
      if (err.status && err.status !== 401) {
        const box = $('#downloads-error');
        box.textContent = `Could not load downloads: ${err.message}`;
        box.classList.remove('d-none');
      }
      return;
    }
    if (!isNewest()) return; // a newer page/filter was asked meanwhile
    missed = null;
    $('#downloads-error').classList.add('d-none');
    view.total = Number(page.total) || 0;
    const items = Array.isArray(page.items) ? page.items : [];
    if (!items.length && view.offset > 0 && view.total > 0) {
      // the page we were on emptied (items finished/removed): step back
      view.offset = Math.max(0, Math.floor((view.total - 1) / PAGE_SIZE) * PAGE_SIZE);
      load();
      return;
    }
    pendingProgress.clear(); // the fresh rows carry numbers at least as new as any asked before
    shown.clear();
    tbody().replaceChildren(...items.map(buildRow));
    renderEmpty();
    renderPager(items.length);
    for (const [apply, data] of since) apply(data, true);
  });
  const reloadSoon = debounce(load, 300);

  /**
   * A download event carried a full object: fix its row, keeping one page.
   * `replayed`: it came while a page request was out, so the page may or may not count it.
   */
  function upsert(d, replayed = false) {
    if (d === null || typeof d !== 'object' || d.id === undefined) return;
    missed?.push([upsert, d]);
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
        reloadSoon();
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
    } else if (newest && replayed) {
      reloadSoon(); // the page's total may count it already: ask again
    } else if (newest) {
      view.total += 1; // lands on page 1; this page's rows shift on next load
      renderPager();
    } else {
      reloadSoon(); // an older download entered this filtered view
    }
  }

  function applyProgress(p) {
    const row = rowFor(p.id);
    // progress is of a running download: a row the server has since ended (an answer that
    // came late, e.g. api/status's active list) keeps the numbers its state gave it
    if (!row || !['downloading', 'queued'].includes(row.dataset.state)) return;
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
    for (const fn of progressHooks) fn(row, p);
  }

  function flushProgress() {
    progressFrame = 0;
    for (const p of pendingProgress.values()) applyProgress(p);
    pendingProgress.clear();
  }

  /** Coalesce progress: at most one DOM pass per animation frame. */
  function queueProgress(p) {
    if (!p || p.id === undefined) return;
    missed?.push([queueProgress, p]);
    pendingProgress.set(String(p.id), p);
    if (!progressFrame) progressFrame = window.requestAnimationFrame(flushProgress);
  }

  async function runAction(button) {
    const { action, id } = button.dataset;
    button.disabled = true;
    const errorBox = $('#downloads-error');
    try {
      const result = await call(`api/downloads/${encodeURIComponent(id)}/${action}`, { method: 'POST' });
      errorBox.classList.add('d-none');
      if (result && result.state) upsert(result);
      else upsert(await call(`api/downloads/${encodeURIComponent(id)}`));
      refreshStatus();
    } catch (err) {
      button.disabled = false;
      if (err.status === 401) return; // the token prompt says it all
      errorBox.textContent = err.status === 403 ? actionError(err) : `${action} #${id}: ${err.message}`;
      errorBox.classList.remove('d-none');
      if (err.status === 409 || err.status === 404) reloadSoon(); // our view was stale
    }
  }

  function setFilter(state) {
    view.state = state;
    $('#state-filter').value = state;
    view.offset = 0;
    load();
  }

  /** Counts, filter options and live rows from one api/status answer. */
  function applyStatus(status) {
    const fresh = vocabulary(status);
    const actionsChanged = fresh.states.some((s) => fresh.actionsFor(s).join() !== vocab.actionsFor(s).join());
    vocab = fresh;
    const counts = status.counts || {};
    $('#counts').replaceChildren(...vocab.states.map((state) => {
      const n = counts[state] ?? 0;
      return el('button', {
        type: 'button',
        class: `badge border-0 count-badge ${n ? stateClass(state) : 'bg-body-secondary text-body-secondary border'}`,
        title: `show ${state} downloads`,
        dataset: { state },
      }, `${state} ${n}`);
    }));
    // the filter select lists the server's states, with their counts
    const select = $('#state-filter');
    const options = [el('option', { value: '' }, 'all states'),
      ...vocab.states.map((state) => el('option', { value: state }, `${state} (${counts[state] ?? 0})`))];
    const same = select.options.length === options.length
      && options.every((o, i) => select.options[i].value === o.value);
    if (same) options.forEach((o, i) => setText(select.options[i], o.textContent));
    else {
      select.replaceChildren(...options);
      select.value = view.state;
    }
    // rows drawn before the server's action list arrived get their buttons now
    if (actionsChanged) {
      for (const row of tbody().querySelectorAll('tr[data-id]')) {
        const d = shown.get(row.dataset.id);
        if (d) row.querySelector('.cell-actions').replaceChildren(buildActions(d));
      }
    }
    // active downloads carry live numbers: patch their rows
    for (const a of status.active || []) queueProgress(a);
  }

  function setup() {
    tbody().addEventListener('click', (ev) => {
      const img = ev.target.closest('img.preview-thumb');
      if (img) {
        if (!previews.reveal(img)) openDetails(img.dataset.id); // first click on a blurred preview only shows it
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
    $('#state-filter').addEventListener('change', (ev) => setFilter(ev.target.value));
    $('#counts').addEventListener('click', (ev) => {
      const b = ev.target.closest('[data-state]');
      if (b) setFilter(view.state === b.dataset.state ? '' : b.dataset.state);
    });
    $('#page-prev').addEventListener('click', () => {
      view.offset = Math.max(0, view.offset - PAGE_SIZE);
      load();
    });
    $('#page-next').addEventListener('click', () => {
      if (view.offset + PAGE_SIZE < view.total) view.offset += PAGE_SIZE;
      load();
    });
  }

  return {
    setup,
    load,
    reloadSoon,
    upsert,
    queueProgress,
    applyStatus,
    rowFor,
    get: (id) => shown.get(String(id)),
    decorate: (fn) => decorators.push(fn),
    onProgress: (fn) => progressHooks.push(fn),
  };
}
