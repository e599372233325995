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

test('an older daemon without the lists: states from counts, the SPEC §6 actions', () => {
  const v = vocabulary({ counts: COUNTS });
  assert.equal(v.fromServer, false);
  assert.deepEqual(v.states, Object.keys(COUNTS));
  assert.deepEqual(v.actionsFor('downloading'), ['pause', 'cancel']);
  assert.deepEqual(v.actionsFor('paused'), ['resume', 'cancel']);
  assert.deepEqual(v.actionsFor('failed'), ['retry']);
  assert.deepEqual(v.actionsFor('completed'), []);
  assert.deepEqual(vocabulary(null).states, []);
  assert.deepEqual(vocabulary({ counts: COUNTS, states: 'junk', actions: 7 }).actionsFor('queued'), ['pause', 'cancel']);
});

test('looks for unknown states and actions are neutral', () => {
  assert.equal(stateClass('completed'), 'text-bg-success');
  assert.equal(stateClass('verifying'), 'text-bg-secondary');
  assert.equal(actionClass('cancel'), 'btn-outline-danger');
  assert.equal(actionClass('boost'), 'btn-outline-secondary');
});
