// The "Add a download" form: one item (SPEC §5) posted to api/download.

import { $, actionError, showResult } from './dom.js';

/** The POST api/download body from the form's values; throws an Error saying what to fix. */
export function itemFrom({ target, sha256, filename, priority, subdir }) {
  target = (target || '').trim();
  if (!target) throw new Error('Enter a URL or a model version id.');
  const body = {};
  if (/^\d+$/.test(target)) body.modelVersionId = Number.parseInt(target, 10);
  else if (/^urn:air:/i.test(target)) body.air = target;
  else body.url = target;
  if ((sha256 || '').trim()) body.sha256 = sha256.trim();
  if ((filename || '').trim()) body.filename = filename.trim();
  priority = (priority || '').trim();
  if (priority) {
    if (!/^-?\d+$/.test(priority)) throw new Error('Priority must be a whole number.');
    body.priority = Number.parseInt(priority, 10);
  }
  if ((subdir || '').trim()) body.subdir = subdir.trim();
  return body;
}

/** createAddForm({call, refreshStatus}) → {setup}. */
export function createAddForm({ call, refreshStatus }) {
  function setup() {
    const form = $('#add-form');
    const result = $('#add-result');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      let body;
      try {
        body = itemFrom({
          target: $('#add-target').value,
          sha256: $('#add-sha256').value,
          filename: $('#add-filename').value,
          priority: $('#add-priority').value,
          subdir: $('#add-subdir').value,
        });
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
        refreshStatus();
      } catch (err) {
        showResult(result, 'danger', actionError(err));
      } finally {
        submit.disabled = false;
      }
    });
  }
  return { setup };
}
