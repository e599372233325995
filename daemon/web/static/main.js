// civitai-daemon GUI: start-up. Builds the views, loads them, follows the
// live feed. The only module with side effects: everything else exports
// functions and factories and does nothing on import.
//
// Adding a view (e.g. library.js for the Library, updates for "Update all"):
//   1. write `static/<name>.js` exporting
//        export const view = {
//          id: 'library', title: 'Library',
//          create(ctx) { ...; return { panel, setup, load, onEvent, onStatus, show }; },
//        };
//      every member of the returned object is optional. `panel` is the view's
//      root element (built with ctx's helpers, or a `<section data-view="<id>">`
//      already in index.html); main puts it under #views and adds a tab for it
//      to #view-tabs. `load()` runs at start, after a token change and on
//      (re)connect; `onEvent({event, time, data})` gets every feed event;
//      `onStatus(status)` every api/status answer; `show()` when its tab opens.
//   2. import it below and append it to VIEWS. Nothing else changes.
// A view of one download row (segments, say) uses the table's hooks instead:
//   ctx.table.decorate((row, d) => ...) and ctx.table.onProgress((row, p) => ...).
// ctx = {call, table, previews, refreshStatus, status(), vocab()}: `call` is
// api() with the token prompt; `status()` the latest api/status answer;
// `vocab()` its states and actions (states.js).

import { Feed } from './client.js';
import { createAddForm } from './add.js';
import { createDetails } from './details.js';
import { $, debounce, el, setText } from './dom.js';
import { formatSpeed, formatUptime } from './format.js';
import { createHistory } from './history.js';
import { view as libraryView } from './library.js';
import { view as updateAllView } from './update_all.js';
import { createPreviews } from './previews.js';
import { attachSegments } from './segments.js';
import { vocabulary } from './states.js';
import { createDownloadsTable } from './table.js';
import { createAuth } from './token.js';
import { createUpdates } from './updates.js';

/** The start page: add form, downloads table, manifests, model updates. */
const downloadsView = {
  id: 'downloads',
  title: 'Downloads',
  create(ctx) {
    const { call, table, refreshStatus } = ctx;
    const past = createHistory({ call });
    const updates = createUpdates({ call, refreshStatus });
    const add = createAddForm({ call, refreshStatus });
    attachSegments(table);
    const refreshHistorySoon = debounce(past.load, 1000);
    const reloadUpdatesSoon = debounce(updates.load, 300);
    return {
      panel: $('[data-view="downloads"]'),
      setup() {
        table.setup();
        add.setup();
        updates.setup();
        $('#retry-failed').addEventListener('click', async (ev) => {
          const button = ev.currentTarget;
          button.disabled = true;
          try {
            const { count } = await call('api/downloads/retry-failed', { method: 'POST' });
            setText(button, count ? `Retried ${count}` : 'None failed');
            table.load();
            refreshStatus();
          } catch (err) {
            if (err.status !== 401) setText(button, 'Retry failed: see the log');
          } finally {
            button.disabled = false;
            setTimeout(() => setText(button, 'Retry all failed'), 3000);
          }
        });
      },
      load() {
        table.load();
        past.load();
        updates.load();
      },
      onEvent({ event, data }) {
        if (event === 'snapshot') {
          // (re)connected: whatever happened while we were away is in the API
          table.load();
          refreshHistorySoon();
          reloadUpdatesSoon();
        } else if (event === 'download.progress') {
          table.queueProgress(data);
        } else if (event.startsWith('download.')) {
          if (data && data.state) table.upsert(data);
          else table.reloadSoon();
          refreshStatus();
          if (event === 'download.completed' || event === 'download.failed') refreshHistorySoon();
        } else if (event.startsWith('manifest.')) {
          refreshHistorySoon();
        } else if (event === 'model.update') {
          reloadUpdatesSoon();
        }
      },
    };
  },
};

// Tab order. Other helpers append their views here (see the top of this file).
const VIEWS = [downloadsView, libraryView, updateAllView];

function followColourScheme() {
  const query = window.matchMedia('(prefers-color-scheme: dark)');
  const apply = () => document.documentElement.setAttribute('data-bs-theme', query.matches ? 'dark' : 'light');
  apply();
  query.addEventListener('change', apply);
}

function showConnection(state) {
  const look = {
    live: ['live', 'text-bg-success'],
    connecting: ['connecting…', 'text-bg-secondary'],
    down: ['offline', 'text-bg-danger'],
  }[state];
  const badge = $('#conn-state');
  badge.textContent = look[0];
  badge.className = `badge ${look[1]}`;
  $('#conn-banner').classList.toggle('d-none', state !== 'down');
}

function showDaemon(status) {
  const bits = [];
  if (status.version) bits.push(`v${status.version}`);
  if (status.uptime !== undefined) bits.push(`up ${formatUptime(status.uptime)}`);
  if (status.workers !== undefined) bits.push(`${status.workers} workers`);
  if (status.throttle) bits.push(`cap ${formatSpeed(status.throttle)}`);
  setText($('#daemon-version'), bits.join(' · '));
}

/** Tabs in #view-tabs for every view with a panel; the one in location.hash opens first. */
function mountTabs(views) {
  const nav = $('#view-tabs');
  const box = $('#views');
  const withPanel = views.filter((v) => v.panel);
  function open(id) {
    for (const v of withPanel) {
      const active = v.id === id;
      v.panel.classList.toggle('d-none', !active);
      const tab = nav.querySelector(`[data-tab="${CSS.escape(v.id)}"]`);
      tab.classList.toggle('active', active);
      tab.setAttribute('aria-selected', String(active));
      if (active && v.show) v.show();
    }
  }
  nav.replaceChildren(...withPanel.map((v) => {
    if (!box.contains(v.panel)) box.append(v.panel);
    return el('li', { class: 'nav-item', role: 'presentation' },
      el('a', { class: 'nav-link', href: `#${v.id}`, role: 'tab', dataset: { tab: v.id } }, v.title));
  }));
  nav.classList.toggle('d-none', withPanel.length < 2); // one view needs no tabs
  nav.addEventListener('click', (ev) => {
    const tab = ev.target.closest('[data-tab]');
    if (!tab) return;
    ev.preventDefault();
    history.replaceState(null, '', `#${tab.dataset.tab}`);
    open(tab.dataset.tab);
  });
  const wanted = location.hash.slice(1);
  open(withPanel.some((v) => v.id === wanted) ? wanted : withPanel[0]?.id);
}

function start() {
  followColourScheme();
  let lastStatus = null;
  let views = [];
  let feed = null;

  const loadAll = () => {
    loadStatus();
    for (const v of views) v.load?.();
  };
  const auth = createAuth({
    onChange() {
      feed.reconnect();
      loadAll();
    },
  });
  const { call } = auth;
  const previews = createPreviews();

  function applyStatus(status) {
    if (!status || typeof status !== 'object') return;
    lastStatus = status;
    if ('role' in status) auth.applyRole(status.role);
    showDaemon(status);
    table.applyStatus(status);
    for (const v of views) v.onStatus?.(status);
  }
  async function loadStatus() {
    try {
      applyStatus(await call('api/status'));
    } catch {
      /* shown through the connection banner / token modal */
    }
  }
  const refreshStatus = debounce(loadStatus, 1000);

  let details = null;
  const table = createDownloadsTable({ call, previews, refreshStatus, openDetails: (id) => details.open(id) });
  details = createDetails({ call, previews, table });
  const ctx = {
    call, table, previews, refreshStatus,
    status: () => lastStatus,
    vocab: () => vocabulary(lastStatus),
  };
  views = VIEWS.map((v) => ({ id: v.id, title: v.title, ...v.create(ctx) }));

  auth.setup();
  previews.setup();
  details.setup();
  for (const v of views) v.setup?.();
  mountTabs(views);

  feed = new Feed({
    onEvent(msg) {
      if (msg.event === 'snapshot') applyStatus(msg.data);
      for (const v of views) v.onEvent?.(msg);
    },
    onState: showConnection,
  });
  loadAll();
}

start();
