// The model-updates panel: new Civitai versions of models you have
// (api/updates), "Check now", and a Download button per new version.

import { $, el, badge, actionError, setText, showResult } from './dom.js';
import { formatTime } from './format.js';

/** One line from the check's summary object, whatever fields it has. */
export function summarise(summary) {
  if (!summary || typeof summary !== 'object') return 'Check finished.';
  const parts = [];
  for (const [key, value] of Object.entries(summary)) {
    if (Array.isArray(value)) parts.push(`${key.replaceAll('_', ' ')}: ${value.length}`);
    else if (value === null || typeof value !== 'object') parts.push(`${key.replaceAll('_', ' ')}: ${value}`);
  }
  return parts.length ? `Check finished — ${parts.join(', ')}.` : 'Check finished.';
}

function buildRow(u) {
  const model = u.model_name ? `${u.model_name}` : `model ${u.modelId ?? '?'}`;
  const version = u.version_name ? `${u.version_name}` : `version ${u.modelVersionId ?? '?'}`;
  return el('tr', { dataset: { modelVersionId: u.modelVersionId ?? '' } },
    el('td', {}, el('div', {}, model),
      u.modelId !== undefined ? el('div', { class: 'small text-body-secondary' }, `#${u.modelId}`) : null),
    el('td', {}, el('div', {}, version),
      el('div', { class: 'small text-body-secondary' }, `#${u.modelVersionId ?? '?'}`)),
    el('td', { class: 'small d-none d-sm-table-cell' }, u.previous_version_id ? `#${u.previous_version_id}` : '—'),
    el('td', { class: 'small text-nowrap d-none d-md-table-cell' }, formatTime(u.detected_at)),
    el('td', {}, u.state ? badge(u.state, 'text-bg-info') : '—'),
    el('td', { class: 'text-end action-only' },
      u.modelVersionId ? el('button', {
        type: 'button',
        class: 'btn btn-sm btn-outline-primary',
        dataset: { action: 'download-update', versionId: u.modelVersionId },
      }, 'Download') : null));
}

/** createUpdates({call, refreshStatus}) → {setup, load}. */
export function createUpdates({ call, refreshStatus }) {
  const result = () => $('#updates-result');

  async function load() {
    let page;
    try {
      page = await call('api/updates');
    } catch {
      return;
    }
    const items = (page && Array.isArray(page.items)) ? page.items : (Array.isArray(page) ? page : []);
    const body = $('#updates tbody');
    body.replaceChildren(...items.map(buildRow));
    if (!items.length) {
      body.append(el('tr', {}, el('td', { colspan: 6, class: 'text-center text-body-secondary py-3' },
        'No updates detected.')));
    }
  }

  function setup() {
    $('#check-updates').addEventListener('click', async (ev) => {
      const button = ev.currentTarget;
      button.disabled = true;
      setText(button, 'Checking…');
      try {
        showResult(result(), 'success', summarise(await call('api/updates/check', { method: 'POST' })));
        load();
      } catch (err) {
        if (err.status !== 401) showResult(result(), 'danger', actionError(err));
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
        showResult(result(), 'success', `Version ${versionId} queued as download #${answer && answer.id}.`);
        refreshStatus();
      } catch (err) {
        button.disabled = false;
        if (err.status !== 401) showResult(result(), 'danger', actionError(err));
      }
    });
  }

  return { setup, load };
}
