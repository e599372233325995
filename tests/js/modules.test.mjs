// Every GUI module but main.js imports with no side effects: node has no
// document, window or location, so any module that touched the page, started
// a timer or opened a socket on import would throw or keep node alive here.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import test from 'node:test';

const STATIC = new URL('../../daemon/web/static/', import.meta.url);
const modules = readdirSync(STATIC).filter((name) => name.endsWith('.js'));

test('the GUI is split into modules beside main.js', () => {
  for (const name of ['main.js', 'client.js', 'format.js', 'table.js', 'details.js', 'token.js', 'history.js']) {
    assert.ok(modules.includes(name), `${name} is missing`);
  }
});

for (const name of modules.filter((n) => n !== 'main.js')) {
  test(`${name} imports without touching the page`, async () => {
    const exported = await import(new URL(name, STATIC));
    assert.ok(Object.keys(exported).length > 0, `${name} exports nothing`);
  });
}

test('main.js is the one module that starts the page', async () => {
  // Without a page it fails at once, on its first use of the DOM.
  await assert.rejects(import(new URL('main.js', STATIC)), ReferenceError);
});

test('the pure helpers of the views', async () => {
  const { itemFrom } = await import(new URL('add.js', STATIC));
  assert.deepEqual(itemFrom({ target: ' 130072 ', priority: '-2' }), { modelVersionId: 130072, priority: -2 });
  assert.deepEqual(itemFrom({ target: 'urn:air:sdxl:lora:civitai:1@2' }), { air: 'urn:air:sdxl:lora:civitai:1@2' });
  assert.deepEqual(itemFrom({ target: 'https://x/y', sha256: 'ab', filename: 'f', subdir: 'Lora' }),
    { url: 'https://x/y', sha256: 'ab', filename: 'f', subdir: 'Lora' });
  assert.throws(() => itemFrom({ target: '  ' }), /Enter a URL/);
  assert.throws(() => itemFrom({ target: '1', priority: '1.5' }), /whole number/);

  const { manifestItems, manifestErrors } = await import(new URL('history.js', STATIC));
  assert.equal(manifestItems(3), '3');
  assert.equal(manifestItems([{ status: 'completed' }, { status: 'failed' }, { status: 'completed' }]),
    '3: 2 completed, 1 failed');
  assert.equal(manifestItems(null), '—');
  assert.deepEqual(manifestErrors({ errors: ['bad json'], items: [{ index: 2, error: 'no url' }, {}] }),
    ['bad json', 'items[2]: no url']);

  const { summarise } = await import(new URL('updates.js', STATIC));
  assert.equal(summarise({ checked: 4, new_versions: [1, 2], nested: {} }), 'Check finished — checked: 4, new versions: 2.');
  assert.equal(summarise(null), 'Check finished.');
});

test('newestOnly lets only the newest call draw, whatever order the answers come in', async () => {
  const { newestOnly } = await import(new URL('dom.js', STATIC));
  const drawn = [];
  const answers = {};
  const load = newestOnly(async (isNewest, name) => {
    await new Promise((resolve) => { answers[name] = resolve; });
    if (isNewest()) drawn.push(name);
  });
  const older = load('older');
  const newer = load('newer');
  answers.newer();
  await newer;
  answers.older(); // the slow, older answer arrives last: it must not replace the newer rows
  await older;
  assert.deepEqual(drawn, ['newer']);
  const again = load('again');
  answers.again();
  await again;
  assert.deepEqual(drawn, ['newer', 'again']);
});
