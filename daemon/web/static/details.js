// The detail dialog: one download's stored Civitai metadata (the .civitai.info
// sidecar through api/downloads/<id>/info), filled with textContent only.

import { $, el, badge, modal, setText, stateBadge } from './dom.js';
import { displayName } from './format.js';
import { isNsfw } from './previews.js';

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

export function civitaiPage(modelId, versionId) {
  if (!modelId) return null;
  const url = new URL(`https://civitai.com/models/${encodeURIComponent(modelId)}`);
  if (versionId) url.searchParams.set('modelVersionId', versionId);
  return url.toString();
}

/** createDetails({call, previews, table}) → {setup, open(id)}. */
export function createDetails({ call, previews, table }) {
  let dialog = null;
  let request = 0; // drops answers for a dialog that was reopened meanwhile

  function fill(d, info) {
    const model = (info && info.model) || {};
    const modelId = d.modelId ?? (info && info.modelId);
    const versionId = d.modelVersionId ?? (info && info.id);
    setText($('#detail-title'), d.model_name || model.name
      ? [d.model_name || model.name, d.version_name || (info && info.name)].filter(Boolean).join(' · ')
      : displayName(d));
    $('#detail-preview-box').replaceChildren(previews.build(d, 'detail-preview') || el('div',
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

  async function open(id) {
    const mine = ++request;
    let d = table.get(id);
    if (!d) {
      try {
        d = await call(`api/downloads/${encodeURIComponent(id)}`);
      } catch {
        return;
      }
    }
    if (mine !== request) return;
    fill(d, null);
    setText($('#detail-note'), d.modelId || d.modelVersionId ? 'Loading Civitai metadata…' : '');
    dialog.show();
    let info = null;
    try {
      info = await call(`api/downloads/${encodeURIComponent(id)}/info`);
    } catch (err) {
      if (mine !== request) return;
      setText($('#detail-note'), err.status === 404 ? 'No Civitai metadata stored for this download.'
        : `Could not load the metadata: ${err.message}`);
      return;
    }
    if (mine !== request) return;
    fill(d, info);
    setText($('#detail-note'), 'Stored when the download was resolved (the .civitai.info sidecar).');
  }

  function setup() {
    dialog = modal($('#detail-modal'));
    $('#detail-preview-box').addEventListener('click', (ev) => {
      const img = ev.target.closest('img');
      if (!img) return;
      if (previews.reveal(img)) {
        const thumb = table.rowFor(img.dataset.id)?.querySelector('img.preview-thumb');
        if (thumb) previews.reveal(thumb);
      }
    });
  }

  return { setup, open };
}
