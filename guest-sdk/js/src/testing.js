// Testing agents in plain Node, without a component: a fake host that
// speaks the WIT-level interface exactly as componentize-js's bindings do
// (JSON strings, BigInt u64s, Uint32Array token ids, errors thrown with a
// `payload`), and helpers to run an agent against it.
//
//   import { FakeHost, runAgent, assistant, toolCall } from 'rollout-guest/testing';
//
//   const host = new FakeHost({ replies: [toolCall('add', { a: 5, b: 3 }), assistant('#### 8')] });
//   const { result, completion } = await runAgent(MyAgent, { metadata: { ground_truth: '8' } }, host);

import { exportAgent } from './agent.js';

/** What componentize-js throws from an import that returned `err`. */
export class ComponentError extends Error {
  constructor(payload) {
    super(typeof payload === 'string' ? payload : `${JSON.stringify(payload)} (see error.payload)`);
    Object.defineProperty(this, 'payload', { value: payload, enumerable: typeof payload !== 'string' });
  }
}

/** An assistant reply with text `content` (finish reason "stop"). */
export function assistant(content, { finishReason = 'stop', completionTokens = 8 } = {}) {
  return { message: { role: 'assistant', content }, finishReason, usage: usage(completionTokens) };
}

/** An assistant reply calling one tool (or several: pass an array of `[name, args]`). */
export function toolCall(name, args, { id = 'call_1', completionTokens = 12 } = {}) {
  const calls = Array.isArray(name) ? name : [[name, args]];
  return {
    message: {
      role: 'assistant',
      content: null,
      tool_calls: calls.map(([n, a], i) => ({
        id: calls.length === 1 ? id : `call_${i + 1}`,
        type: 'function',
        function: { name: n, arguments: typeof a === 'string' ? a : JSON.stringify(a) },
      })),
    },
    finishReason: 'tool_calls',
    usage: usage(completionTokens),
  };
}

/** A WIT `chat-error` for the fake host to answer with, e.g. `chatError('trainer-rejected', {status: 400, body: 'bad'})`. */
export function chatError(tag, val) {
  return { error: { tag, val } };
}

function usage(completionTokens) {
  return { promptTokens: 10, completionTokens, totalTokens: 10 + completionTokens };
}

/**
 * A scripted host. `replies`: an array (one per chat call) or a function
 * `(messages, params, index) => reply`; a reply is `{message, finishReason,
 * usage?, tokenIds?, promptTokenIds?, logprobs?}` (see `assistant`,
 * `toolCall`) or `chatError(...)`. Records `chats`, `events`, `completions`.
 */
export class FakeHost {
  constructor({ replies = [], debugLog = true } = {}) {
    this.replies = replies;
    this.debugLog = debugLog;
    this.chats = [];
    this.events = [];
    this.completions = [];
    // The WIT functions are called unbound, as the bindings do.
    this.chat = this.chat.bind(this);
    this.logEvent = this.logEvent.bind(this);
    this.debugLogEnabled = this.debugLogEnabled.bind(this);
    this.complete = this.complete.bind(this);
  }

  chat(request) {
    const messages = JSON.parse(request.messages);
    const params = request.params === undefined ? null : JSON.parse(request.params);
    const index = this.chats.length;
    this.chats.push({ messages, params });
    if (this.completions.length > 0) {
      throw new ComponentError({ tag: 'invalid-request', val: 'the rollout is already completed' });
    }
    const reply = typeof this.replies === 'function' ? this.replies(messages, params, index) : this.replies[index];
    if (reply === undefined) {
      throw new ComponentError({ tag: 'invalid-request', val: `FakeHost: no scripted reply for chat call ${index}` });
    }
    if (reply.error) throw new ComponentError(reply.error);
    const u = reply.usage ?? usage(0);
    return {
      message: typeof reply.message === 'string' ? reply.message : JSON.stringify(reply.message),
      finishReason: reply.finishReason ?? 'stop',
      usage: {
        promptTokens: BigInt(u.promptTokens ?? 0),
        completionTokens: BigInt(u.completionTokens ?? 0),
        totalTokens: BigInt(u.totalTokens ?? 0),
      },
      tokenIds: reply.tokenIds ? Uint32Array.from(reply.tokenIds) : undefined,
      promptTokenIds: reply.promptTokenIds ? Uint32Array.from(reply.promptTokenIds) : undefined,
      logprobs: reply.logprobs === undefined ? undefined : JSON.stringify(reply.logprobs),
    };
  }

  logEvent(name, data) {
    this.events.push({ name, data: JSON.parse(data) });
  }

  debugLogEnabled() {
    return this.debugLog;
  }

  complete(completion) {
    let finalMessages;
    try {
      finalMessages = JSON.parse(completion.finalMessages);
    } catch (e) {
      throw new ComponentError({ tag: 'invalid', val: `final-messages is not JSON: ${e.message}` });
    }
    if (completion.status === 'error' && completion.errorMessage == null) {
      throw new ComponentError({ tag: 'invalid', val: 'an error completion needs an error-message' });
    }
    if (this.completions.length > 0) throw new ComponentError({ tag: 'already-completed' });
    this.completions.push({
      status: completion.status,
      finalMessages,
      finishReason: completion.finishReason,
      errorMessage: completion.errorMessage ?? null,
      reward: completion.reward ?? null,
      toolMetrics: { ...completion.toolMetrics },
      extraFields: completion.extraFields == null ? null : JSON.parse(completion.extraFields),
    });
  }

  /** The one completion, or null. */
  get completion() {
    return this.completions[0] ?? null;
  }
}

/**
 * A WIT `rollout-request` (JSON strings, BigInt `maxTokensTotal`) from plain
 * values; defaults: one user message, `{}` params and metadata, 10 turns,
 * 8192 tokens.
 */
export function witRequest({
  rolloutId = 'test-rollout',
  messages = [{ role: 'user', content: 'What is 5 + 3?' }],
  completionParams = {},
  toolServerUrl = undefined,
  maxTurns = 10,
  maxTokensTotal = 8192,
  metadata = {},
} = {}) {
  return {
    rolloutId,
    messages: JSON.stringify(messages),
    completionParams: JSON.stringify(completionParams),
    toolServerUrl: toolServerUrl ?? undefined,
    maxTurns,
    maxTokensTotal: BigInt(maxTokensTotal),
    metadata: JSON.stringify(metadata),
  };
}

/**
 * Runs an agent class as the host would (get-tools, then run) against
 * `host`. Returns `{tools, result, completion, host}`: the WIT results of
 * both calls (`{tag, val}`) and the host's one completion (or null).
 */
export async function runAgent(Agent, request = {}, host = new FakeHost()) {
  const agent = exportAgent(Agent, { host });
  const raw = witRequest(request);
  const tools = await agent.getTools(raw);
  const result = await agent.run(raw);
  return { tools, result, completion: host.completion, host };
}
