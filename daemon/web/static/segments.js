// Segments of a download over several connections (SPEC §12): "N connections" and one thin bar
// per segment under the row's progress bar, from the download object and its progress events.
// Uses the table's hooks only; nothing happens on import.

import { el } from './dom.js';

function segmentBar(segment, total) {
  const length = Math.max(1, segment.end - segment.start);
  const done = Math.min(100, (100 * segment.done) / length);
  return el('div', {
    class: 'segment',
    title: `bytes ${segment.start}–${segment.end}: ${done.toFixed(0)} %`,
    style: { width: `${(100 * length) / total}%` },
  }, el('div', { class: 'segment-done', style: { width: `${done}%` } }));
}

/** Show (or remove) the segments of row `row` from `d`, a download object or a progress event. */
export function renderSegments(row, d) {
  const cell = row.querySelector('.cell-progress');
  if (!cell) return;
  const segments = Array.isArray(d.segments) ? d.segments : [];
  let box = cell.querySelector('.cell-segments');
  if (!segments.length || row.dataset.state !== 'downloading') {
    if (box) box.remove();
    return;
  }
  if (!box) {
    box = el('div', { class: 'cell-segments small text-body-secondary' });
    cell.append(box);
  }
  const total = d.total || segments[segments.length - 1].end;
  const count = d.connections || 0;
  box.replaceChildren(
    el('span', { class: 'segment-count' }, `${count} connection${count === 1 ? '' : 's'}`),
    el('div', { class: 'segment-bars' }, segments.map((s) => segmentBar(s, total))),
  );
}

/** Register the segment view on the downloads table. */
export function attachSegments(table) {
  table.decorate(renderSegments);
  table.onProgress(renderSegments);
}
