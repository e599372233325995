// Text for numbers the daemon sends: sizes, speeds, durations, times, labels.
// Pure functions: no DOM, no globals, so node's test runner checks them alone
// (tests/js/format.test.mjs).

const DASH = '—';

function finite(value) {
  if (value === null || value === undefined || value === '') return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}

/** Decimal units (1 KB = 1000 B), one decimal: "999 B", "1.5 MB"; "—" for no number. */
export function formatBytes(value) {
  const n = finite(value);
  if (n === null) return DASH;
  if (n < 1000) return `${Math.max(0, Math.round(n))} B`;
  const units = ['KB', 'MB', 'GB', 'TB', 'PB'];
  let v = n / 1000;
  let i = 0;
  // 999.96 KB would print as "1000.0 KB": switch unit before rounding does
  while (v >= 999.95 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

/** Bytes per second as "12.3 MB/s"; "—" when nothing moves. */
export function formatSpeed(bps) {
  const n = finite(bps);
  if (n === null || n <= 0) return DASH;
  return `${formatBytes(n)}/s`;
}

/** Seconds left as h:mm:ss; "—" when unknown. */
export function formatEta(seconds) {
  const n = finite(seconds);
  if (n === null) return DASH;
  const s = Math.round(n);
  if (s < 0) return DASH;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}`;
}

/** Whole percent 0–100, or null when the total is unknown. */
export function percent(bytes, total) {
  const t = finite(total);
  if (!t || t <= 0) return null;
  const b = finite(bytes) || 0;
  return Math.max(0, Math.min(100, Math.floor((b / t) * 100)));
}

/** "1.0 MB / 4.0 MB (25%)", or just the bytes while the total is unknown. */
export function formatProgress(bytes, total) {
  const b = finite(bytes) || 0;
  if (!finite(total)) return b ? formatBytes(b) : DASH;
  return `${formatBytes(b)} / ${formatBytes(total)} (${percent(b, total)}%)`;
}

/** An ISO time in the browser's locale, short; the raw text when it does not parse. */
export function formatTime(iso) {
  if (!iso) return DASH;
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' });
}

/** An uptime in its two largest units: "3d 4h", "2h 5m", "7m". */
export function formatUptime(seconds) {
  const s = Math.max(0, Math.floor(finite(seconds) || 0));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return `${m}m`;
}

/** A count with thousands separators; "—" for none. */
export function formatCount(value) {
  const n = finite(value);
  return n === null ? DASH : n.toLocaleString();
}

/** A 0–1 ratio as "97.5%"; "—" when nothing has finished yet. */
export function formatRatio(ratio, finished) {
  const n = finite(ratio);
  if (n === null || !(finished > 0 || n > 0)) return DASH;
  return `${(n * 100).toFixed(1)}%`;
}

/** A download's name for the table: its file name, else the URL's last segment, else its ids. */
export function displayName(d) {
  if (d.filename) return d.filename;
  if (d.url) {
    try {
      const last = new URL(d.url).pathname.split('/').filter(Boolean).pop();
      if (last) return decodeURIComponent(last);
    } catch { /* fall through */ }
  }
  return d.modelVersionId ? `version ${d.modelVersionId}` : `download ${d.id}`;
}

/** "Model · Version", else the Civitai ids, else "—". */
export function modelLabel(d) {
  const parts = [];
  if (d.model_name) parts.push(d.model_name);
  if (d.version_name) parts.push(d.version_name);
  if (!parts.length && d.modelVersionId) parts.push(`version ${d.modelVersionId}`);
  if (!parts.length && d.modelId) parts.push(`model ${d.modelId}`);
  return parts.join(' · ') || DASH;
}
