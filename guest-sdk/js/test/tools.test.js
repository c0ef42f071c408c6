import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ToolError, Toolbox, formatToolValue, numberArg, parseNumber, rustF64, tool } from '../src/index.js';

const schema = {
  type: 'object',
  properties: { a: { type: 'number' }, b: { type: 'number' } },
  required: ['a', 'b'],
};

function box() {
  return new Toolbox([
    tool({ name: 'add', description: 'Add two numbers', parameters: schema }, (args) => numberArg(args, 'a') + numberArg(args, 'b')),
    tool({ name: 'fail', description: 'Throws', parameters: schema }, () => {
      throw new ToolError('nope');
    }),
    tool({ name: 'plain', parameters: schema }, () => {
      throw new Error('plain failure');
    }),
    tool({ name: 'buggy', parameters: schema }, (args) => args.missing.field),
    tool({ name: 'text', parameters: schema }, () => 'hello'),
    tool({ name: 'object', parameters: schema }, () => ({ x: [1, 2], y: 'z' })),
    tool({ name: 'async', parameters: schema }, async () => 1),
  ]);
}

function fakeCtx() {
  return {
    calls: [],
    recordToolCall(ms) {
      this.calls.push(ms);
    },
  };
}

function call(name, args, id = 'call_1') {
  return { id, type: 'function', function: { name, arguments: args } };
}

test('definitions are OpenAI tool objects', () => {
  const defs = box().definitions();
  assert.deepEqual(defs[0], {
    type: 'function',
    function: { name: 'add', description: 'Add two numbers', parameters: schema },
  });
  assert.equal(defs[2].function.description, '');
});

test('execute turns tool calls into role: tool messages, as the Rust Toolbox does', () => {
  const ctx = fakeCtx();
  const results = box().execute(ctx, [
    call('add', '{"a": 5, "b": 3}'),
    call('add', { a: 2.5, b: 0 }, 'call_2'),
    call('add', '{"a": "0", "b": 1e16}', 'call_3'),
    call('add', '{"a": 5', 'call_4'),
    call('add', '[1, 2]', 'call_5'),
    call('add', '{"a": 5}', 'call_6'),
    call('add', '{"a": true, "b": 1}', 'call_7'),
    call('add', '{"a": "five", "b": 1}', 'call_8'),
    call('nope', '{}', 'call_9'),
    call('fail', '{}', 'call_10'),
    call('plain', '{}', 'call_11'),
    call('buggy', '', 'call_12'),
    call('text', null, 'call_13'),
    call('object', '{}', 'call_14'),
    call('async', '{}', 'call_15'),
    { id: 'call_16', function: {} },
    { function: { name: 'text' } },
    call('add', 42, 'call_18'),
  ]);
  const contents = results.map((m) => m.content);
  assert.deepEqual(contents, [
    '8',
    '2.5',
    '1e+16',
    // V8's words; in the component SpiderMonkey's, shortened to serde_json's style.
    contents[3],
    'Error: arguments must be a JSON object',
    "Error: missing required argument 'b'",
    "Error: 'a' must be a number, got true",
    `Error: 'a' must be a number, got "five"`,
    "Error: unknown tool 'nope'",
    'Error: nope',
    'Error: plain failure',
    contents[11],
    'hello',
    '{"x":[1,2],"y":"z"}',
    "Error: tool 'async' returned a Promise; tool handlers must be synchronous",
    'Error: tool call has no function name',
    'hello',
    'Error: arguments must be a JSON object',
  ]);
  assert.match(contents[3], /^Error: arguments are not valid JSON: ./);
  assert.match(contents[11], /^Error: TypeError: .*field/);
  assert.deepEqual(results[0], { role: 'tool', content: '8', tool_call_id: 'call_1' });
  assert.equal(results[16].tool_call_id, '');
  assert.equal(ctx.calls.length, results.length);
  assert.ok(ctx.calls.every((ms) => typeof ms === 'number' && ms >= 0));
});

test('execute takes a chat reply and works without a context', () => {
  const reply = { toolCalls: [call('add', '{"a": 1, "b": 2}')] };
  assert.deepEqual(box().execute(null, reply), [{ role: 'tool', content: '3', tool_call_id: 'call_1' }]);
  assert.deepEqual(box().execute(null, { toolCalls: [] }), []);
});

test('call runs one tool and throws ToolError', () => {
  assert.equal(box().call('add', { a: 1, b: 1 }), 2);
  assert.throws(() => box().call('x', {}), { name: 'ToolError', message: "unknown tool 'x'" });
  assert.throws(() => box().call('add', '"s"'), { message: 'arguments must be a JSON object' });
});

test('declaring tools checks the declaration', () => {
  assert.throws(() => tool({ description: 'x' }, () => 1), TypeError);
  assert.throws(() => tool({ name: 'x' }), TypeError);
  assert.throws(() => tool({ name: 'x', parameters: [] }, () => 1), TypeError);
  assert.throws(() => new Toolbox([tool({ name: 'x' }, () => 1), tool({ name: 'x' }, () => 2)]), /already declared/);
  const t = new Toolbox().add({ name: 'y' }, () => 1);
  assert.equal(t.definitions()[0].function.name, 'y');
});

test('numberArg reads numbers and numeric strings as Rust does', () => {
  assert.equal(numberArg({ a: 3 }, 'a'), 3);
  assert.equal(numberArg({ a: ' -2.5e3 ' }, 'a'), -2500);
  assert.equal(numberArg({ a: '5.' }, 'a'), 5);
  assert.equal(numberArg({ a: '.5' }, 'a'), 0.5);
  assert.throws(() => numberArg({}, 'a'), { message: "missing required argument 'a'" });
  assert.throws(() => numberArg({ a: null }, 'a'), { message: "'a' must be a number, got null" });
  assert.throws(() => numberArg({ a: [1] }, 'a'), { message: "'a' must be a number, got [1]" });
  assert.throws(() => numberArg({ a: { x: 1 } }, 'a'), { message: `'a' must be a number, got {"x":1}` });
  for (const bad of ['', '  ', '0x10', '1e', 'inf', 'NaN', '1e999', '1_000', 'Infinity']) {
    assert.throws(() => numberArg({ a: bad }, 'a'), { message: `'a' must be a number, got "${bad}"` }, bad);
  }
  assert.throws(() => numberArg({ a: Infinity }, 'a'), { message: "'a' is not a finite number" });
  assert.equal(parseNumber('12'), 12);
  assert.equal(parseNumber(''), null);
});

test('formatToolValue prints values as the Rust SDK does', () => {
  // Reference strings from serde_json 1.0.154 (zmij) for the f64 values.
  const f64 = [
    [8, '8'],
    [-0, '0'],
    [2.5, '2.5'],
    [-2.5, '-2.5'],
    [1e15, '1000000000000000.0'],
    [-1e15, '-1000000000000000.0'],
    [1e16, '1e+16'],
    [1.5e16, '1.5e+16'],
    [123456789012345680, '1.2345678901234568e+17'],
    [0.1, '0.1'],
    [0.00001, '0.00001'],
    [0.000012, '0.000012'],
    [0.000001, '1e-6'],
    [1.5e-7, '1.5e-7'],
    [1e21, '1e+21'],
    [1e300, '1e+300'],
    [5e-324, '5e-324'],
    [0.1 + 0.2, '0.30000000000000004'],
    [1 / 3, '0.3333333333333333'],
    [-1e-10, '-1e-10'],
    [999999999999999.9, '999999999999999.9'],
    [NaN, 'null'],
    [Infinity, 'null'],
  ];
  for (const [value, text] of f64) assert.equal(formatToolValue(value), text, String(value));
  assert.equal(rustF64(8), '8.0');
  assert.equal(rustF64(0), '0.0');
  assert.equal(rustF64(-0), '-0.0');
  assert.equal(formatToolValue('s'), 's');
  assert.equal(formatToolValue(true), 'true');
  assert.equal(formatToolValue(null), 'null');
  assert.equal(formatToolValue(undefined), 'null');
  assert.equal(formatToolValue(12n), '12');
  assert.equal(formatToolValue([1, 'a', null]), '[1,"a",null]');
});
