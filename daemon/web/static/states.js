// The download states and the queue actions, as the server publishes them.
//
// GET api/status carries "states" (the list, in order) and "actions" (which
// states each action leaves); the GUI draws filters, counts and buttons from
// those, never from a copy of its own. Until the first answer arrives (or
// from a daemon that sends no lists) the page shows no action buttons, and
// the states come from the keys of "counts". Pure functions: tested by
// tests/js/states.test.mjs.

// Looks only: a state without an entry gets a neutral badge.
const STATE_CLASS = {
  queued: 'text-bg-secondary',
  downloading: 'text-bg-primary',
  paused: 'text-bg-warning',
  completed: 'text-bg-success',
  failed: 'text-bg-danger',
  cancelled: 'bg-body-secondary text-body-emphasis border',
  processing: 'text-bg-info',
  done: 'text-bg-success',
};
const ACTION_CLASS = {
  pause: 'btn-outline-warning',
  resume: 'btn-outline-success',
  cancel: 'btn-outline-danger',
  retry: 'btn-outline-primary',
};

export function stateClass(state) {
  return STATE_CLASS[state] || 'text-bg-secondary';
}

export function actionClass(action) {
  return ACTION_CLASS[action] || 'btn-outline-secondary';
}

function names(list) {
  return Array.isArray(list) ? list.filter((s) => typeof s === 'string' && s) : [];
}

/**
 * action → [states it leaves] from the server's "actions", which may be
 * {action: [states]}, {state: [actions]} or [{name|action, from|states}].
 */
function actionSources(raw, states) {
  if (Array.isArray(raw)) {
    const out = {};
    for (const a of raw) {
      const name = a && (a.name || a.action);
      if (typeof name === 'string') out[name] = names(a.from || a.states || a.sources);
    }
    return out;
  }
  if (!raw || typeof raw !== 'object') return null;
  const keys = Object.keys(raw);
  if (keys.length && keys.every((k) => states.includes(k))) {
    const out = {};
    for (const [state, actions] of Object.entries(raw)) {
      for (const action of names(actions)) (out[action] ||= []).push(state);
    }
    return out;
  }
  const out = {};
  for (const [action, value] of Object.entries(raw)) {
    out[action] = Array.isArray(value) ? names(value) : names(value && (value.from || value.states));
  }
  return out;
}

/**
 * The states and actions from one api/status answer.
 * Returns {states, actions, fromServer, actionsFor(state)}.
 */
export function vocabulary(status) {
  const s = status && typeof status === 'object' ? status : {};
  let states = names(s.states);
  const statesFromServer = states.length > 0;
  if (!states.length && s.counts && typeof s.counts === 'object') states = Object.keys(s.counts);
  const sources = actionSources(s.actions, states) || {};
  const actions = Object.keys(sources);
  return {
    states,
    actions,
    fromServer: statesFromServer && actions.length > 0,
    actionsFor(state) {
      return actions.filter((a) => sources[a].includes(state));
    },
  };
}
