// Preview images from the daemon, blurred when NSFW-rated unless the switch
// (kept in this browser) or a click on the image says otherwise.

import { getToken } from './client.js';
import { $, el } from './dom.js';
import { modelLabel } from './format.js';

const NSFW_KEY = 'civitai-daemon-show-nsfw';
const NSFW_MIN = 4; // Civitai nsfwLevel: 1 PG, 2 PG-13, 4 R, 8 X, 16 XXX
const BLURRED_TITLE = 'NSFW preview: click to show';

export function isNsfw(d) {
  return Number(d.nsfw_level) >= NSFW_MIN;
}

function showNsfw() {
  try {
    return localStorage.getItem(NSFW_KEY) === '1';
  } catch {
    return false;
  }
}

/** The daemon's own preview URL; <img> cannot send headers, so the token rides along as ?token=. */
function previewUrl(d) {
  const url = new URL(d.preview, location.href);
  const token = getToken();
  if (token) url.searchParams.set('token', token);
  return url.toString();
}

/** createPreviews() → {build, reveal, setup}. */
export function createPreviews() {
  const revealed = new Set(); // ids whose NSFW preview was clicked open on this page

  function isBlurred(id) {
    return !showNsfw() && !revealed.has(String(id));
  }

  /** An <img> in its frame, or null when the download has no preview. cls: preview-thumb | detail-preview. */
  function build(d, cls) {
    if (!d.preview) return null;
    const nsfw = isNsfw(d);
    const blurred = nsfw && isBlurred(d.id);
    const img = el('img', {
      src: previewUrl(d),
      alt: `preview of ${modelLabel(d)}`,
      class: `${cls}${blurred ? ' nsfw-blur' : ''}`,
      title: blurred ? BLURRED_TITLE : null,
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

  function applySetting() {
    for (const img of document.querySelectorAll('img[data-nsfw="1"]')) {
      const blurred = isBlurred(img.dataset.id);
      img.classList.toggle('nsfw-blur', blurred);
      if (blurred) img.title = BLURRED_TITLE;
      else img.removeAttribute('title');
    }
  }

  function setup() {
    const toggle = $('#nsfw-toggle');
    toggle.checked = showNsfw();
    toggle.addEventListener('change', () => {
      try {
        if (toggle.checked) localStorage.setItem(NSFW_KEY, '1');
        else localStorage.removeItem(NSFW_KEY);
      } catch { /* no storage: the switch still applies to this page */ }
      if (!toggle.checked) revealed.clear();
      applySetting();
    });
  }

  return { build, reveal, setup };
}
