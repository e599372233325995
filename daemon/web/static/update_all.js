// The Updates view (SPEC §11): every detected update with a check box, its
// state and reason, the model's policy; "Update all" shows what will happen
// (files, bytes, files replaced) and asks before it enqueues anything.

import { $, actionError, badge, debounce, el, newestOnly, setText, showResult } from './dom.js';
import { formatBytes, formatCount, formatTime } from './format.js';

const STATE_CLASS = {
  pending: 'text-bg-warning', waiting: 'text-bg-info', paid: 'text-bg-dark', queued: 'text-bg-primary',
  applied: 'text-bg-success', ignored: 'text-bg-secondary', failed: 'text-bg-danger',
};
const APPLICABLE = new Set(['pending', 'waiting', 'failed', 'ignored']);
const POLICIES = ['', 'notify', 'alongside', 'replace', 'ignore'];

/** Ticked at first: what "all" means on the server too (pending, not a base-model change). */
function preselected(u) {
  return u.state === 'pending' && u.reason !== 'base model changed';
}

function panel() {
  return el('div', { dataset: { view: 'updates' } },
    el('section', { class: 'card mb-3', 'aria-labelledby': 'update-all-title' },
      el('div', { class: 'card-header d-flex flex-wrap gap-2 align-items-center' },
        el('h2', { id: 'update-all-title', class: 'h6 mb-0 me-auto' }, 'Updates'),
        el('label', { for: 'update-mode', class: 'small' }, 'Mode'),
        el('select', { id: 'update-mode', class: 'form-select form-select-sm w-auto action-only' },
          el('option', { value: '' }, "each model's policy"), el('option', { value: 'alongside' }, 'alongside'),
          el('option', { value: 'replace' }, 'replace (old files to .replaced/)')),
        el('button', { id: 'update-all', type: 'button', class: 'btn btn-sm btn-primary action-only' }, 'Update all')),
      el('div', { id: 'update-plan', class: 'alert alert-warning m-2 d-none', role: 'alertdialog',
        'aria-labelledby': 'update-plan-text' },
        el('div', { id: 'update-plan-text', class: 'mb-2' }),
        el('button', { id: 'update-confirm', type: 'button', class: 'btn btn-sm btn-danger me-2' }, 'Confirm'),
        el('button', { id: 'update-cancel', type: 'button', class: 'btn btn-sm btn-outline-secondary' }, 'Cancel')),
      el('div', { id: 'update-all-result', class: 'small px-3 pt-2', role: 'status', 'aria-live': 'polite' }),
      el('div', { id: 'update-selection', class: 'small px-3 py-2 text-body-secondary' }),
      el('div', { class: 'table-responsive' },
        el('table', { id: 'update-list', class: 'table table-sm align-middle mb-0' },
          el('thead', {}, el('tr', {},
            el('th', { class: 'action-only' },
              el('input', { id: 'update-check-all', type: 'checkbox', class: 'form-check-input',
                'aria-label': 'select every update that can be applied' })),
            el('th', {}, 'Model'), el('th', {}, 'New version'), el('th', {}, 'State'),
            el('th', { class: 'd-none d-md-table-cell' }, 'Why'), el('th', { class: 'text-end' }, 'Size'),
            el('th', {}, 'Policy'))),
          el('tbody', {})))));
}

function row(u) {
  const applicable = APPLICABLE.has(u.state);
  const base = u.base_model && u.previous_base_model && u.base_model !== u.previous_base_model
    ? `${u.previous_base_model} → ${u.base_model}` : u.base_model;
  const why = [u.reason, u.not_before ? `from ${formatTime(u.not_before)}` : null].filter(Boolean).join(', ');
  return el('tr', { dataset: { id: u.id, state: u.state } },
    el('td', { class: 'action-only' }, el('input', {
      type: 'checkbox', class: 'form-check-input update-pick', disabled: !applicable,
      checked: applicable && preselected(u), 'aria-label': `select ${u.model_name || u.modelId}`,
      dataset: { id: u.id, size: u.size ?? 0, policy: u.effective_policy || '' },
    })),
    el('td', {}, el('div', {}, u.model_name || `model ${u.modelId}`),
      el('div', { class: 'small text-body-secondary' }, `#${u.modelId}`)),
    el('td', {}, el('div', {}, u.version_name || `#${u.modelVersionId}`),
      el('div', { class: 'small text-body-secondary' }, base || '')),
    el('td', { class: 'cell-update-state' }, badge(u.state, STATE_CLASS[u.state])),
    el('td', { class: 'small d-none d-md-table-cell' }, why),
    el('td', { class: 'text-end text-nowrap' }, u.size ? formatBytes(u.size) : '—'),
    el('td', {}, el('select', {
      class: 'form-select form-select-sm update-policy action-only', 'aria-label': 'policy of this model',
      dataset: { model: u.modelId },
    }, ...POLICIES.map((p) => el('option', { value: p, selected: (u.policy || '') === p },
      p || `default (${u.effective_policy || 'alongside'})`)))));
}

export const view = {
  id: 'updates',
  title: 'Updates',
  create(ctx) {
    const { call, refreshStatus } = ctx;
    const root = panel();
    const picks = () => [...root.querySelectorAll('.update-pick:checked')];

    function plan() {
      const mode = $('#update-mode', root).value;
      const chosen = picks();
      const bytes = chosen.reduce((sum, box) => sum + Number(box.dataset.size || 0), 0);
      const replaced = chosen.filter((box) => (mode || box.dataset.policy) === 'replace').length;
      return { ids: chosen.map((box) => Number(box.dataset.id)), bytes, replaced, mode };
    }

    function showSelection() {
      const p = plan();
      setText($('#update-selection', root), `${formatCount(p.ids.length)} selected: `
        + `${formatCount(p.ids.length)} files, ${formatBytes(p.bytes)}, ${formatCount(p.replaced)} replaced`);
      $('#update-all', root).disabled = p.ids.length === 0;
    }

    const load = newestOnly(async (isNewest) => {
      try {
        const page = await call('api/updates?limit=1000');
        if (!isNewest()) return; // an event asked for a newer list meanwhile: its answer draws
        const items = page.items || [];
        $('tbody', root).replaceChildren(...items.map(row));
        if (!items.length) {
          $('tbody', root).append(el('tr', {}, el('td', { colspan: 7, class: 'text-center text-body-secondary py-3' },
            'No updates detected.')));
        }
        showSelection();
      } catch {
        /* the token prompt and the connection banner say why */
      }
    });
    const loadSoon = debounce(load, 500);

    return {
      panel: root,
      setup() {
        root.addEventListener('change', async (ev) => {
          if (ev.target.id === 'update-check-all') {
            for (const box of root.querySelectorAll('.update-pick:not(:disabled)')) box.checked = ev.target.checked;
          }
          if (ev.target.classList.contains('update-policy')) {
            const select = ev.target;
            try {
              await call(`api/library/models/${select.dataset.model}/policy`,
                { method: 'PUT', body: { policy: select.value || null } });
              showResult($('#update-all-result', root), 'success', `Policy of model #${select.dataset.model}: `
                + `${select.value || 'default'}.`);
              load();
            } catch (err) {
              showResult($('#update-all-result', root), 'danger', actionError(err));
            }
          }
          $('#update-plan', root).classList.add('d-none');
          showSelection();
        });
        $('#update-all', root).addEventListener('click', () => {
          const p = plan();
          setText($('#update-plan-text', root), `Download ${formatCount(p.ids.length)} files `
            + `(${formatBytes(p.bytes)}); ${formatCount(p.replaced)} old files will move to .replaced/ `
            + 'once their new version is in place. Nothing is deleted.');
          $('#update-plan', root).classList.remove('d-none');
        });
        $('#update-cancel', root).addEventListener('click', () => $('#update-plan', root).classList.add('d-none'));
        $('#update-confirm', root).addEventListener('click', async () => {
          const p = plan();
          $('#update-plan', root).classList.add('d-none');
          const body = { ids: p.ids };
          if (p.mode) body.mode = p.mode;
          try {
            const answer = await call('api/updates/apply', { method: 'POST', body });
            const skipped = (answer.skipped || []).length;
            showResult($('#update-all-result', root), 'success', `${answer.ids.length} update(s) queued`
              + (skipped ? `, ${skipped} not applicable` : '') + '.');
            refreshStatus();
            load();
          } catch (err) {
            showResult($('#update-all-result', root), 'danger', actionError(err));
          }
        });
      },
      load,
      show: load,
      onEvent({ event }) {
        if (event === 'model.update' || event === 'updates.summary' || event === 'download.completed'
            || event === 'download.failed' || event === 'snapshot') loadSoon();
      },
    };
  },
};
