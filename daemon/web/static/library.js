// The Library view (SPEC §10): the model files the user already has, their
// counts by type and base model, a search, the unknown files, and the scan
// with its live progress bar from the WebSocket feed.

import { $, actionError, badge, debounce, el, newestOnly, setText, showResult } from './dom.js';
import { formatBytes, formatCount, formatEta, formatSpeed } from './format.js';

const PAGE = 100;
const SOURCE_CLASS = {
  downloaded: 'text-bg-primary', sidecar: 'text-bg-info', civitai: 'text-bg-success', unknown: 'text-bg-secondary',
};

function panel() {
  return el('div', { dataset: { view: 'library' } },
    el('section', { class: 'card mb-3', 'aria-labelledby': 'library-title' },
      el('div', { class: 'card-header d-flex flex-wrap gap-2 align-items-center' },
        el('h2', { id: 'library-title', class: 'h6 mb-0 me-auto' }, 'Library'),
        el('span', { id: 'library-summary', class: 'small text-body-secondary' }),
        el('button', { id: 'library-scan-now', type: 'button', class: 'btn btn-sm btn-primary action-only' },
          'Scan now')),
      el('div', { class: 'card-body py-2' },
        el('div', { id: 'library-scan', class: 'mb-2 d-none', role: 'status', 'aria-live': 'polite' },
          el('div', { class: 'progress', role: 'progressbar', 'aria-label': 'library scan' },
            el('div', { id: 'library-scan-bar', class: 'progress-bar progress-bar-striped progress-bar-animated',
              style: { width: '0%' } })),
          el('div', { id: 'library-scan-text', class: 'small text-body-secondary mt-1' })),
        el('div', { id: 'library-scan-result', class: 'small mb-2' }),
        el('div', { id: 'library-counts', class: 'd-flex flex-wrap gap-1 small mb-2', 'aria-label': 'counts' }),
        el('form', { id: 'library-filter', class: 'row g-2', role: 'search' },
          el('div', { class: 'col-12 col-md-6' },
            el('label', { for: 'library-q', class: 'visually-hidden' }, 'Search the library'),
            el('input', { id: 'library-q', type: 'search', class: 'form-control form-control-sm',
              placeholder: 'search file, model or version name, or a SHA256' })),
          el('div', { class: 'col-6 col-md-3' },
            el('label', { for: 'library-state', class: 'visually-hidden' }, 'State'),
            el('select', { id: 'library-state', class: 'form-select form-select-sm' },
              el('option', { value: '' }, 'all files'), el('option', { value: 'identified' }, 'identified'),
              el('option', { value: 'unknown' }, 'unknown to Civitai'), el('option', { value: 'missing' }, 'missing'))),
          el('div', { class: 'col-6 col-md-3' },
            el('label', { for: 'library-type', class: 'visually-hidden' }, 'Type'),
            el('select', { id: 'library-type', class: 'form-select form-select-sm' },
              el('option', { value: '' }, 'all types')))))),
    el('div', { class: 'table-responsive card' },
      el('table', { id: 'library-table', class: 'table table-sm table-hover align-middle mb-0' },
        el('thead', {}, el('tr', {},
          el('th', {}, 'File'), el('th', {}, 'Model / version'), el('th', { class: 'd-none d-md-table-cell' }, 'Type'),
          el('th', { class: 'd-none d-md-table-cell' }, 'Base model'), el('th', { class: 'text-end' }, 'Size'),
          el('th', {}, 'Source'))),
        el('tbody', {})),
      el('div', { class: 'card-footer d-flex gap-2 align-items-center small' },
        el('span', { id: 'library-page-info', class: 'me-auto' }),
        el('button', { id: 'library-prev', type: 'button', class: 'btn btn-sm btn-outline-secondary' }, 'Previous'),
        el('button', { id: 'library-next', type: 'button', class: 'btn btn-sm btn-outline-secondary' }, 'Next'))));
}

function row(entry, previews) {
  const name = entry.path.split('/').pop();
  const model = entry.modelId
    ? [entry.model_name || `model ${entry.modelId}`, entry.version_name].filter(Boolean).join(' · ')
    : '—';
  const thumb = previews.build(entry, 'preview-thumb');
  return el('tr', { dataset: { id: entry.id }, class: entry.missing ? 'table-warning' : null },
    el('td', {}, el('div', { class: 'd-flex gap-2 align-items-center' }, thumb,
      el('div', { class: 'min-w-0' }, el('div', { class: 'fw-semibold entry-name' }, name),
        el('div', { class: 'small text-body-secondary entry-path' }, entry.path),
        entry.missing ? badge('missing', 'text-bg-warning') : null))),
    el('td', { class: 'cell-model' }, model),
    el('td', { class: 'd-none d-md-table-cell cell-type' }, entry.type || '—'),
    el('td', { class: 'd-none d-md-table-cell cell-base' }, entry.base_model || '—'),
    el('td', { class: 'text-end text-nowrap' }, formatBytes(entry.size)),
    el('td', { class: 'cell-source' }, badge(entry.source, SOURCE_CLASS[entry.source])));
}

function scanText(s) {
  const parts = [`${formatCount(s.files_done)} / ${formatCount(s.files)} files`,
    `${formatBytes(s.bytes_done)} / ${formatBytes(s.bytes)}`, formatSpeed(s.rate), `ETA ${formatEta(s.eta)}`];
  return `${s.phase || s.state}: ${parts.join(' · ')}`;
}

export const view = {
  id: 'library',
  title: 'Library',
  create(ctx) {
    const { call, previews } = ctx;
    const root = panel();
    const q = $('#library-q', root);
    const stateSelect = $('#library-state', root);
    const typeSelect = $('#library-type', root);
    let offset = 0;

    function showScan(s) {
      const box = $('#library-scan', root);
      const running = s && s.state === 'running';
      box.classList.toggle('d-none', !running);
      $('#library-scan-now', root).disabled = running;
      if (running) {
        const share = s.bytes ? (100 * s.bytes_done) / s.bytes : (s.files ? (100 * s.files_done) / s.files : 0);
        $('#library-scan-bar', root).style.width = `${Math.min(100, share).toFixed(1)}%`;
        setText($('#library-scan-text', root), scanText(s));
      } else if (s && s.state !== 'idle') {
        const errors = (s.errors || []).length;
        setText($('#library-scan-result', root), `Last scan ${s.state}: ${formatCount(s.files)} files, `
          + `${formatCount(s.new)} new, ${formatCount(s.identified)} identified, ${formatCount(s.unknown)} unknown, `
          + `${formatCount(s.api_calls)} Civitai calls${errors ? `, ${errors} unreadable` : ''}`);
      }
    }

    function showCounts(counts, total) {
      const box = $('#library-counts', root);
      const chips = [el('span', { class: 'text-body-secondary' }, 'Types:')];
      for (const [type, n] of Object.entries(counts.by_type || {}).sort((a, b) => b[1] - a[1])) {
        chips.push(el('span', { class: 'badge text-bg-light border', dataset: { type } }, `${type} ${n}`));
      }
      chips.push(el('span', { class: 'text-body-secondary ms-2' }, 'Base models:'));
      for (const [base, n] of Object.entries(counts.by_base_model || {}).sort((a, b) => b[1] - a[1])) {
        chips.push(el('span', { class: 'badge text-bg-secondary', dataset: { base } }, `${base} ${n}`));
      }
      box.replaceChildren(...chips);
      setText($('#library-summary', root), `${formatCount(counts.identified)} identified · `
        + `${formatCount(counts.unknown)} unknown · ${formatCount(counts.missing)} missing`);
      const current = typeSelect.value;
      typeSelect.replaceChildren(el('option', { value: '' }, 'all types'),
        ...Object.keys(counts.by_type || {}).filter((t) => t !== 'unknown').sort()
          .map((t) => el('option', { value: t }, t)));
      typeSelect.value = current;
      setText($('#library-page-info', root), total
        ? `${offset + 1}–${Math.min(offset + PAGE, total)} of ${total}` : 'no files');
      $('#library-prev', root).disabled = offset === 0;
      $('#library-next', root).disabled = offset + PAGE >= total;
    }

    const load = newestOnly(async (isNewest) => {
      const params = new URLSearchParams({ limit: PAGE, offset });
      if (q.value.trim()) params.set('q', q.value.trim());
      if (stateSelect.value) params.set('state', stateSelect.value);
      if (typeSelect.value) params.set('type', typeSelect.value);
      try {
        const [list, scan] = await Promise.all([call(`api/library?${params}`), call('api/library/scan')]);
        if (!isNewest()) return; // a newer filter or page was asked meanwhile: its answer draws
        $('tbody', root).replaceChildren(...list.items.map((e) => row(e, previews)));
        showCounts(list.counts || {}, list.total);
        showScan(scan);
      } catch (err) {
        if (isNewest()) showResult($('#library-scan-result', root), 'danger', actionError(err));
      }
    });
    const loadSoon = debounce(load, 500);
    const refilter = () => {
      offset = 0;
      load();
    };

    return {
      panel: root,
      setup() {
        q.addEventListener('input', debounce(refilter, 300));
        $('#library-filter', root).addEventListener('submit', (ev) => {
          ev.preventDefault();
          refilter();
        });
        stateSelect.addEventListener('change', refilter);
        typeSelect.addEventListener('change', refilter);
        $('#library-counts', root).addEventListener('click', (ev) => {
          const chip = ev.target.closest('[data-type]');
          if (!chip || chip.dataset.type === 'unknown') return;
          typeSelect.value = chip.dataset.type;
          refilter();
        });
        $('#library-prev', root).addEventListener('click', () => {
          offset = Math.max(0, offset - PAGE);
          load();
        });
        $('#library-next', root).addEventListener('click', () => {
          offset += PAGE;
          load();
        });
        $('tbody', root).addEventListener('click', (ev) => {
          const img = ev.target.closest('img');
          if (img) previews.reveal(img);
        });
        $('#library-scan-now', root).addEventListener('click', async () => {
          const button = $('#library-scan-now', root);
          button.disabled = true;
          try {
            await call('api/library/scan', { method: 'POST', body: {} });
            showScan({ state: 'running', phase: 'walking', files: 0, files_done: 0, bytes: 0, bytes_done: 0 });
          } catch (err) {
            button.disabled = false;
            if (err.status === 409) return; // one is running already: its progress arrives on the feed
            showResult($('#library-scan-result', root), 'danger', actionError(err));
          }
        });
      },
      load,
      show: load,
      onEvent({ event, data }) {
        if (event === 'library.scan.progress') showScan(data);
        else if (event === 'library.scan.done') {
          showScan(data);
          load();
        } else if (event === 'download.completed' || event === 'snapshot') loadSoon();
      },
    };
  },
};
