import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  BadResponseError,
  ChatError,
  CompleteError,
  InvalidRequestError,
  RolloutContext,
  TimeoutError,
  TrainerFailedError,
  TrainerRejectedError,
  TransportError,
  decodeRequest,
} from '../src/index.js';
import { FakeHost, assistant, chatError, toolCall, witRequest } from '../src/testing.js';

function context(host, request = {}) {
  return new RolloutContext(decodeRequest(witRequest(request)), host);
}

test('decodeRequest decodes the WIT JSON strings and u64s', () => {
  const raw = witRequest({
    rolloutId: 'r-1',
    completionParams: { temperature: 0.5 },
    metadata: { ground_truth: '8' },
    maxTurns: 3,
    maxTokensTotal: 100,
  });
  assert.equal(typeof raw.maxTokensTotal, 'bigint');
  assert.deepEqual(decodeRequest(raw), {
    rolloutId: 'r-1',
    messages: [{ role: 'user', content: 'What is 5 + 3?' }],
    completionParams: { temperature: 0.5 },
    toolServerUrl: null,
    maxTurns: 3,
    maxTokensTotal: 100,
    metadata: { ground_truth: '8' },
  });
  assert.equal(decodeRequest(witRequest({ toolServerUrl: 'http://t' })).toolServerUrl, 'http://t');
  assert.throws(() => decodeRequest({ ...raw, messages: '[' }), /^Error: host sent malformed messages: /);
  assert.throws(() => decodeRequest({ ...raw, messages: '{}' }), {
    message: 'host sent messages that is not a JSON array',
  });
  assert.throws(() => decodeRequest({ ...raw, metadata: '[]' }), {
    message: 'host sent metadata that is not a JSON object',
  });
});

test('chat sends the history and params as JSON and decodes the reply lazily', () => {
  const host = new FakeHost({
    replies: [
      { ...toolCall('add', { a: 1, b: 2 }), tokenIds: [1, 2, 3], promptTokenIds: [7], logprobs: { content: [] } },
      assistant('#### 3'),
    ],
  });
  const ctx = context(host);
  const messages = [...ctx.request.messages];
  const reply = ctx.chat(messages);
  assert.deepEqual(host.chats[0], { messages, params: null });
  assert.equal(reply.finishReason, 'tool_calls');
  assert.deepEqual(reply.usage, { promptTokens: 10, completionTokens: 12, totalTokens: 22 });
  assert.equal(reply.hasToolCalls, true);
  assert.equal(reply.toolCalls[0].function.name, 'add');
  assert.equal(reply.content, null);
  assert.equal(reply.message.role, 'assistant');
  assert.strictEqual(reply.message, reply.message, 'decoded once');
  assert.deepEqual(reply.tokenIds, [1, 2, 3]);
  assert.ok(Array.isArray(reply.tokenIds));
  assert.deepEqual(reply.promptTokenIds, [7]);
  assert.deepEqual(reply.logprobs, { content: [] });
  assert.equal(reply.logprobsJson, '{"content":[]}');
  assert.equal(ctx.completionTokens, 12);

  messages.push(reply.message, { role: 'tool', content: '3', tool_call_id: 'call_1' });
  const second = ctx.chat(messages, { temperature: 0, seed: 1 });
  assert.deepEqual(host.chats[1].params, { temperature: 0, seed: 1 });
  assert.equal(second.content, '#### 3');
  assert.equal(second.hasToolCalls, false);
  assert.deepEqual(second.toolCalls, []);
  assert.equal(second.tokenIds, null);
  assert.equal(second.promptTokenIds, null);
  assert.equal(second.logprobs, null);
  assert.equal(ctx.completionTokens, 20);
});

test('a malformed reply message is a BadResponseError on first access', () => {
  const host = new FakeHost({ replies: [{ message: '{oops', finishReason: 'stop' }] });
  const reply = context(host).chat([]);
  assert.equal(reply.finishReason, 'stop');
  assert.throws(() => reply.message, (e) => e instanceof BadResponseError && /host sent a malformed message/.test(e.message));
});

test('each WIT chat-error case is its own Error subclass', () => {
  const cases = [
    [chatError('transport', 'connection refused'), TransportError, 'trainer unreachable: connection refused'],
    [chatError('timeout', 'after 300 s'), TimeoutError, 'trainer timed out: after 300 s'],
    [
      chatError('trainer-rejected', { status: 400, body: 'bad' }),
      TrainerRejectedError,
      'trainer rejected the request with HTTP 400: bad',
    ],
    [chatError('trainer-failed', { status: 503, body: 'down' }), TrainerFailedError, 'trainer failed with HTTP 503: down'],
    [chatError('bad-response', 'no choices'), BadResponseError, 'unusable trainer response: no choices'],
    [chatError('invalid-request', 'not append-only'), InvalidRequestError, 'invalid chat request: not append-only'],
  ];
  for (const [reply, cls, message] of cases) {
    const ctx = context(new FakeHost({ replies: [reply] }));
    assert.throws(
      () => ctx.chat([]),
      (e) => {
        assert.ok(e instanceof cls && e instanceof ChatError && e instanceof Error);
        assert.equal(e.name, cls.name);
        assert.equal(e.message, message);
        assert.equal(e.kind, reply.error.tag);
        return true;
      },
    );
  }
  const rejected = new TrainerRejectedError(422, 'body');
  assert.equal(rejected.status, 422);
  assert.equal(rejected.body, 'body');
});

test('errors that are not WIT errors pass through chat unchanged', () => {
  const boom = new RangeError('boom');
  const ctx = context({ debugLogEnabled: () => false, chat: () => { throw boom; } });
  assert.throws(() => ctx.chat([]), (e) => e === boom);
});

test('complete sends the completion with metrics, reward and extra fields', () => {
  const host = new FakeHost();
  const ctx = context(host);
  ctx.recordToolCall(1.5);
  ctx.recordToolCall(2);
  const messages = [...ctx.request.messages, { role: 'assistant', content: '#### 8' }];
  ctx.complete(messages, { finishReason: 'stop', reward: 1, extraFields: { k: 'v' } });
  assert.deepEqual(host.completion, {
    status: 'completed',
    finalMessages: messages,
    finishReason: 'stop',
    errorMessage: null,
    reward: 1,
    toolMetrics: { numToolCalls: 2, toolLatencyMs: 3.5 },
    extraFields: { k: 'v' },
  });
  assert.throws(() => ctx.complete(messages), (e) => e instanceof CompleteError && e.kind === 'already-completed' && e.message === 'the rollout was already completed');
});

test('complete defaults and argument checks', () => {
  const host = new FakeHost();
  const ctx = context(host);
  assert.throws(() => ctx.complete(ctx.request.messages, 'stop'), TypeError);
  assert.throws(() => ctx.complete('x'), TypeError);
  assert.throws(() => ctx.complete([], { reward: '1' }), TypeError);
  ctx.complete(ctx.request.messages, { extraFields: {} });
  assert.equal(host.completion.finishReason, 'stop');
  assert.equal(host.completion.reward, null);
  assert.equal(host.completion.extraFields, null);
});

test('an invalid completion is a CompleteError with the host message', () => {
  const host = new FakeHost();
  host.complete = () => {
    const e = new Error('x');
    Object.defineProperty(e, 'payload', { value: { tag: 'invalid', val: 'final messages too large' } });
    throw e;
  };
  assert.throws(() => context(host).complete([]), (e) => e instanceof CompleteError && e.kind === 'invalid' && e.message === 'final messages too large');
});

test('error ends the rollout as failed with the history so far', () => {
  const host = new FakeHost({ replies: [assistant('hi')] });
  const ctx = context(host);
  ctx.chat(ctx.request.messages);
  ctx.error('gave up');
  assert.equal(host.completion.status, 'error');
  assert.equal(host.completion.finishReason, 'error');
  assert.equal(host.completion.errorMessage, 'gave up');
  assert.deepEqual(host.completion.finalMessages, [...ctx.request.messages, { role: 'assistant', content: 'hi' }]);

  const other = new FakeHost();
  const ctx2 = context(other);
  ctx2.error('early', [{ role: 'user', content: 'x' }]);
  assert.deepEqual(other.completion.finalMessages, [{ role: 'user', content: 'x' }]);
});

test('logEvent writes JSON when the host keeps a debug log, and nothing otherwise', () => {
  const on = new FakeHost({ debugLog: true });
  const ctxOn = context(on);
  assert.equal(ctxOn.debugLogEnabled, true);
  ctxOn.logEvent('pre_llm', { turn: 0 });
  assert.deepEqual(on.events, [{ name: 'pre_llm', data: { turn: 0 } }]);

  let calls = 0;
  const off = { debugLogEnabled: () => false, logEvent: () => calls++ };
  const ctxOff = context(off);
  ctxOff.logEvent('pre_llm', { turn: 0 });
  assert.equal(ctxOff.debugLogEnabled, false);
  assert.equal(calls, 0);
});
