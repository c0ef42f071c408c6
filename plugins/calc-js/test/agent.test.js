import assert from 'node:assert/strict';
import { test } from 'node:test';

import { FakeHost, assistant, chatError, runAgent, toolCall } from 'rollout-guest/testing';
import { Calculator, extractAnswer, reward, tools } from '../src/agent.js';

const schema = {
  type: 'object',
  properties: {
    a: { type: 'number', description: 'First number' },
    b: { type: 'number', description: 'Second number' },
  },
  required: ['a', 'b'],
};

const user = { role: 'user', content: 'What is 5 + 3?' };

test('offers the four tools of the Rust calculator', async () => {
  const { tools: result } = await runAgent(Calculator, {}, new FakeHost({ replies: [assistant('#### 8')] }));
  assert.equal(result.tag, 'ok');
  assert.deepEqual(
    result.val.map((t) => [t.name, t.description, JSON.parse(t.parameters)]),
    [
      ['add', 'Add two numbers', schema],
      ['subtract', 'Subtract the second number from the first', schema],
      ['multiply', 'Multiply two numbers', schema],
      ['divide', 'Divide the first number by the second', schema],
    ],
  );
});

test('5 + 3: one tool call, then the answer; reward 1.0', async () => {
  const host = new FakeHost({
    replies: (messages) => (messages.some((m) => m.role === 'tool') ? assistant('The answer is #### 8') : toolCall('add', { a: 5, b: 3 })),
  });
  const { result, completion } = await runAgent(Calculator, { messages: [user], metadata: { ground_truth: '8' } }, host);
  assert.deepEqual(result, { tag: 'ok', val: undefined });
  assert.equal(completion.status, 'completed');
  assert.equal(completion.finishReason, 'stop');
  assert.equal(completion.reward, 1.0);
  assert.deepEqual(completion.finalMessages[2], { role: 'tool', content: '8', tool_call_id: 'call_1' });
  assert.equal(completion.finalMessages.length, 4);
  assert.equal(completion.toolMetrics.numToolCalls, 1);
  assert.deepEqual(host.chats[1].messages.slice(0, 2), [user, toolCall('add', { a: 5, b: 3 }).message]);
  assert.deepEqual(
    host.events.map((e) => e.name),
    ['pre_llm', 'llm_response', 'tool_results', 'pre_llm', 'llm_response', 'rollout_complete'],
  );
  assert.deepEqual(host.events[1].data, {
    turn: 0,
    has_tool_calls: true,
    num_tool_calls: 1,
    finish_reason: 'tool_calls',
    completion_tokens: 12,
  });
  assert.deepEqual(host.events[2].data, { turn: 0, num_tool_results: 1, results: ['8'] });
  assert.deepEqual(host.events[5].data, { finish_reason: 'stop', reward: 1, num_messages: 4 });
});

test('no debug events without a debug log', async () => {
  const host = new FakeHost({ replies: [assistant('#### 8')], debugLog: false });
  await runAgent(Calculator, {}, host);
  assert.deepEqual(host.events, []);
  assert.equal(host.completion.finishReason, 'stop');
});

test('tool errors as the Rust calculator words them', () => {
  const run = (name, args) => tools.execute(null, [{ id: 'c', function: { name, arguments: JSON.stringify(args) } }])[0].content;
  assert.equal(run('divide', { a: 1, b: 0 }), 'Error: division by zero');
  assert.equal(run('divide', { a: 7, b: 2 }), '3.5');
  assert.equal(run('subtract', { a: 2, b: 5 }), '-3');
  assert.equal(run('multiply', { a: 1e200, b: 1e200 }), 'Error: result is not a finite number');
  assert.equal(run('multiply', { a: '4', b: 2.5 }), '10');
  assert.equal(run('add', { a: 1 }), "Error: missing required argument 'b'");
  assert.equal(run('power', { a: 1, b: 2 }), "Error: unknown tool 'power'");
});

test('finish reasons: max_turns, max_tokens, and the reply own', async () => {
  const always = () => toolCall('add', { a: 1, b: 1 });
  const turns = await runAgent(Calculator, { maxTurns: 3 }, new FakeHost({ replies: always }));
  assert.equal(turns.completion.finishReason, 'max_turns');
  assert.equal(turns.host.chats.length, 3);
  assert.equal(turns.completion.reward, null);

  const tokens = await runAgent(Calculator, { maxTokensTotal: 20 }, new FakeHost({ replies: always }));
  assert.equal(tokens.completion.finishReason, 'max_tokens');
  assert.equal(tokens.host.chats.length, 2);

  const length = await runAgent(
    Calculator,
    { metadata: { ground_truth: 8 } },
    new FakeHost({ replies: [assistant('#### 8', { finishReason: 'length' })] }),
  );
  assert.equal(length.completion.finishReason, 'length');
  assert.equal(length.completion.reward, 1);

  const none = await runAgent(Calculator, { maxTurns: 0 }, new FakeHost());
  assert.equal(none.completion.finishReason, 'max_turns');
  assert.equal(none.host.chats.length, 0);
});

test('a chat error fails run with the error class and message', async () => {
  const host = new FakeHost({ replies: [chatError('trainer-rejected', { status: 400, body: 'no' })] });
  const { result, completion } = await runAgent(Calculator, {}, host);
  assert.equal(completion, null);
  assert.match(result.val, /^TrainerRejectedError: trainer rejected the request with HTTP 400: no \(at Calculator\.run .*agent\.js:\d+:\d+\)\)$/);
});

test('reward: the last assistant answer against the ground truth', () => {
  const req = (metadata) => ({ metadata });
  const said = (...contents) => contents.map((content) => ({ role: 'assistant', content }));
  assert.equal(reward(said('#### 8'), req({ ground_truth: '8' })), 1);
  assert.equal(reward(said('#### 8.00000000001'), req({ ground_truth: '8' })), 1);
  assert.equal(reward(said('#### 9'), req({ ground_truth: '8' })), 0);
  assert.equal(reward(said('#### 8', 'no answer'), req({ ground_truth: '8' })), 0);
  assert.equal(reward(said('#### 1,234'), req({ ground_truth: '1234' })), 1);
  assert.equal(reward(said('#### 1,234'), req({ ground_truth: 1234 })), 1);
  assert.equal(reward(said('#### 8'), req({})), null);
  assert.equal(reward(said('#### 8'), req({ ground_truth: null })), 0);
  assert.equal(reward(said('#### 8'), req({ ground_truth: '' })), 0);
  assert.equal(reward([{ role: 'assistant', content: null }], req({ ground_truth: '8' })), 0);
  assert.equal(reward([{ role: 'user', content: '#### 8' }], req({ ground_truth: '8' })), 0);
  assert.equal(extractAnswer('#### 1 then #### -2.5e1 tail'), -25);
  assert.equal(extractAnswer('####   +3.'), 3);
  assert.equal(extractAnswer('#### x'), null);
  assert.equal(extractAnswer('no marker'), null);
  assert.equal(extractAnswer('#### 0x10'), 0);
});
