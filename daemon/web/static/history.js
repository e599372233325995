// What has happened: the metric cards (api/metrics) and the manifest list
// (api/manifests) with each manifest's problems.

import { $, el, setText, stateBadge } from './dom.js';
import { formatBytes, formatCount, formatRatio, formatSpeed, formatTime } from './format.js';

const MANIFEST_LIMIT = 50;
const ERRORS_SHOWN = 10;

/** The items cell: a count, or result items summarised by status ("3: 2 completed, 1 failed"). */
export function manifestItems(items) {
  if (typeof items === 'number') return String(items);
  if (!Array.isArray(items)) return '—';
  const byStatus = {};
  for (const item of items) {
    const s = (item && (item.status || item.state)) || 'pending';
    byStatus[s] = (byStatus[s] || 0) + 1;
  }
  const parts = Object.entries(byStatus).map(([s, n]) => `${n} ${s}`);
  return parts.length ? `${items.length}: ${parts.join(', ')}` : '0';
}

/** Every problem of a manifest: its own errors, then each item's, as "items[i]: …". */
export function manifestErrors(m) {
  const errors = Array.isArray(m.errors) ? m.errors : (m.errors ? [String(m.errors)] : []);
  const itemErrors = Array.isArray(m.items)
    ? m.items.filter((i) => i && i.error).map((i) => `items[${i.index ?? '?'}]: ${i.error}`)
    : [];
  return [...errors, ...itemErrors];
}

function buildManifestRow(m) {
  const errors = manifestErrors(m);
  return el('tr', { dataset: { manifest: m.manifest ?? '' } },
    el('td', { class: 'text-break' },
      el('div', {}, m.manifest ?? '—'),
      errors.length
        ? el('ul', { class: 'manifest-errors small text-danger mb-0 ps-3' },
          errors.slice(0, ERRORS_SHOWN).map((e) => el('li', {}, e)),
          errors.length > ERRORS_SHOWN ? el('li', {}, `… ${errors.length - ERRORS_SHOWN} more`) : null)
        : null),
    el('td', { class: 'manifest-status' }, stateBadge(m.status)),
    el('td', { class: 'small' }, manifestItems(m.items)),
    el('td', { class: 'small text-nowrap d-none d-sm-table-cell' }, formatTime(m.received_at)),
    el('td', { class: 'small text-nowrap d-none d-sm-table-cell' }, formatTime(m.finished_at)));
}

/** createHistory({call}) → {loadMetrics, loadManifests, load}. */
export function createHistory({ call }) {
  async function loadMetrics() {
    let m;
    try {
      m = await call('api/metrics');
    } catch {
      return;
    }
    if (!m) return;
    setText($('#metric-completed'), formatCount(m.completed));
    setText($('#metric-failed'), formatCount(m.failed));
    setText($('#metric-bytes'), formatBytes(m.bytes ?? 0));
    setText($('#metric-speed'), formatSpeed(m.average_speed));
    const finished = (Number(m.completed) || 0) + (Number(m.failed) || 0);
    setText($('#metric-success'), formatRatio(m.success_rate, finished));
    const extra = [];
    if (m.downloads !== undefined) extra.push(`${formatCount(m.downloads)} downloads`);
    if (m.retries !== undefined) extra.push(`${formatCount(m.retries)} retries`);
    if (m.hash_mismatches !== undefined) extra.push(`${formatCount(m.hash_mismatches)} hash mismatches`);
    setText($('#metric-extra'), extra.join(' · '));
  }

  async function loadManifests() {
    let page;
    try {
      page = await call(`api/manifests?limit=${MANIFEST_LIMIT}&offset=0`);
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

  function load() {
    loadMetrics();
    loadManifests();
  }

  return { load, loadMetrics, loadManifests };
}
