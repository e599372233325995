// format.js alone, in node: sizes, speeds, durations, labels.
import assert from 'node:assert/strict';
import test from 'node:test';

import {
  displayName, formatBytes, formatCount, formatEta, formatProgress, formatRatio, formatSpeed, formatTime,
  formatUptime, modelLabel, percent,
} from '../../daemon/web/static/format.js';

test('formatBytes: decimal units, one decimal, no "1000.0"', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(999), '999 B');
  assert.equal(formatBytes(1000), '1.0 KB');
  assert.equal(formatBytes(1_500_000), '1.5 MB');
  assert.equal(formatBytes(999_960), '1.0 MB');
  assert.equal(formatBytes(999_949), '999.9 KB');
  assert.equal(formatBytes(6_938_040_682), '6.9 GB');
  assert.equal(formatBytes(2e18), '2000.0 PB');
  assert.equal(formatBytes('4000'), '4.0 KB');
  assert.equal(formatBytes(-5), '0 B');
  for (const none of [null, undefined, '', 'x', NaN, Infinity]) assert.equal(formatBytes(none), '—');
});

test('formatSpeed: per second, a dash when nothing moves', () => {
  assert.equal(formatSpeed(12_345_678), '12.3 MB/s');
  assert.equal(formatSpeed(500), '500 B/s');
  for (const none of [0, -1, null, undefined, 'fast']) assert.equal(formatSpeed(none), '—');
});

test('formatEta: h:mm:ss, rounded, a dash when unknown', () => {
  assert.equal(formatEta(0), '0:00:00');
  assert.equal(formatEta(59.6), '0:01:00');
  assert.equal(formatEta(3661), '1:01:01');
  assert.equal(formatEta(100 * 3600 + 5), '100:00:05');
  for (const none of [null, undefined, -3, 'soon']) assert.equal(formatEta(none), '—');
});

test('percent and formatProgress', () => {
  assert.equal(percent(1, 4), 25);
  assert.equal(percent(999, 1000), 99);
  assert.equal(percent(5000, 1000), 100);
  assert.equal(percent(5, 0), null);
  assert.equal(percent(5, null), null);
  assert.equal(formatProgress(1_000_000, 4_000_000), '1.0 MB / 4.0 MB (25%)');
  assert.equal(formatProgress(2500, null), '2.5 KB');
  assert.equal(formatProgress(0, null), '—');
  assert.equal(formatProgress(undefined, 4000), '0 B / 4.0 KB (0%)');
});

test('formatUptime: the two largest units', () => {
  assert.equal(formatUptime(59), '0m');
  assert.equal(formatUptime(125), '2m');
  assert.equal(formatUptime(2 * 3600 + 5 * 60), '2h 5m');
  assert.equal(formatUptime(3 * 86400 + 4 * 3600 + 59), '3d 4h');
  assert.equal(formatUptime(null), '0m');
});

test('formatTime keeps text it cannot parse', () => {
  assert.equal(formatTime(null), '—');
  assert.equal(formatTime('not a time'), 'not a time');
  assert.match(formatTime('2026-11-24T21:04:58Z'), /\d/);
});

test('formatCount and formatRatio', () => {
  assert.equal(formatCount(null), '—');
  assert.equal(formatCount(12), '12');
  assert.equal(formatRatio(1, 55), '100.0%');
  assert.equal(formatRatio(0.975, 40), '97.5%');
  assert.equal(formatRatio(0, 0), '—');
  assert.equal(formatRatio(0, 3), '0.0%');
  assert.equal(formatRatio(null, 3), '—');
});

test('displayName and modelLabel fall back step by step', () => {
  assert.equal(displayName({ id: 1, filename: 'a.safetensors', url: 'https://x/b.bin' }), 'a.safetensors');
  assert.equal(displayName({ id: 1, url: 'https://x/dir/my%20file.bin?x=1' }), 'my file.bin');
  assert.equal(displayName({ id: 1, url: 'https://x/', modelVersionId: 7 }), 'version 7');
  assert.equal(displayName({ id: 3, url: 'not a url' }), 'download 3');
  assert.equal(modelLabel({ model_name: 'Juggernaut', version_name: 'v9' }), 'Juggernaut · v9');
  assert.equal(modelLabel({ modelVersionId: 5, modelId: 2 }), 'version 5');
  assert.equal(modelLabel({ modelId: 2 }), 'model 2');
  assert.equal(modelLabel({}), '—');
});
