// states.js: the GUI's states and actions come from the server's api/status.
import assert from 'node:assert/strict';
import test from 'node:test';

import { actionClass, stateClass, vocabulary } from '../../daemon/web/static/states.js';

const COUNTS = { queued: 1, downloading: 0, paused: 0, completed: 4, failed: 0, cancelled: 0 };

test('states and actions as {action: [states]} from the server', () => {
  const v = vocabulary({
    counts: COUNTS,
    states: ['queued', 'downloading', 'paused', 'completed', 'failed', 'cancelled', 'verifying'],
    actions: { pause: ['queued', 'downloading', 'verifying'], resume: ['paused'], retry: ['failed'] },
  });
  assert.equal(v.fromServer, true);
  assert.deepEqual(v.states.at(-1), 'verifying');
  assert.deepEqual(v.actions, ['pause', 'resume', 'retry']);
  assert.deepEqual(v.actionsFor('verifying'), ['pause']);
  assert.deepEqual(v.actionsFor('cancelled'), []); // the server dropped retry from cancelled
  assert.deepEqual(v.actionsFor('completed'), []);
});

test('actions as {state: [actions]} and as a list of objects', () => {
  const byState = vocabulary({ states: ['a', 'b'], actions: { a: ['go', 'stop'], b: ['stop'] } });
  assert.deepEqual(byState.actionsFor('a'), ['go', 'stop']);
  assert.deepEqual(byState.actionsFor('b'), ['stop']);
  const listed = vocabulary({ states: ['a', 'b'], actions: [{ name: 'go', from: ['b'] }, { action: 'x', states: ['a'] }] });
  assert.deepEqual(listed.actionsFor('b'), ['go']);
  assert.deepEqual(listed.actionsFor('a'), ['x']);
});

test('the lists as api/status sends them today', () => {
  const v = vocabulary({
    counts: COUNTS,
    states: Object.keys(COUNTS),
    actions: { cancel: ['downloading', 'paused', 'queued'], pause: ['downloading', 'queued'],
      resume: ['paused'], retry: ['cancelled', 'failed'] },
  });
  assert.equal(v.fromServer, true);
  assert.deepEqual(v.actionsFor('downloading'), ['cancel', 'pause']);
  assert.deepEqual(v.actionsFor('paused'), ['cancel', 'resume']);
  assert.deepEqual(v.actionsFor('failed'), ['retry']);
  assert.deepEqual(v.actionsFor('completed'), []);
});

test('no lists (before the first answer, or an older daemon): no buttons, states from counts', () => {
  const v = vocabulary({ counts: COUNTS });
  assert.equal(v.fromServer, false);
  assert.deepEqual(v.states, Object.keys(COUNTS));
  for (const state of v.states) assert.deepEqual(v.actionsFor(state), []);
  assert.deepEqual(vocabulary(null).states, []);
  assert.deepEqual(vocabulary(null).actionsFor('queued'), []);
  assert.deepEqual(vocabulary({ counts: COUNTS, states: 'junk', actions: 7 }).actionsFor('queued'), []);
});

test('looks for unknown states and actions are neutral', () => {
  assert.equal(stateClass('completed'), 'text-bg-success');
  assert.equal(stateClass('verifying'), 'text-bg-secondary');
  assert.equal(actionClass('cancel'), 'btn-outline-danger');
  assert.equal(actionClass('boost'), 'btn-outline-secondary');
});
