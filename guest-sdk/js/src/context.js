// The agent's handle on its rollout: the request (decoded from the WIT
// record), and the host calls `chat`, `logEvent`, `complete` / `error`.

import { BadResponseError, SdkError, chatErrorFromWit, completeErrorFromWit, markCaller, witPayload } from './errors.js';

/**
 * The trainer's rollout request, decoded from the WIT `rollout-request`:
 * `{rolloutId, messages, completionParams, toolServerUrl, maxTurns,
 * maxTokensTotal, metadata}`. Throws an Error whose message is the WIT
 * error string when the host sent malformed JSON.
 */
export function decodeRequest(raw) {
  return {
    rolloutId: raw.rolloutId,
    messages: parseJson(raw.messages, 'messages', 'array'),
    completionParams: parseJson(raw.completionParams, 'completion_params', 'object'),
    toolServerUrl: raw.toolServerUrl ?? null,
    maxTurns: Number(raw.maxTurns),
    maxTokensTotal: Number(raw.maxTokensTotal),
    metadata: parseJson(raw.metadata, 'metadata', 'object'),
  };
}

function parseJson(text, what, shape) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new SdkError(`host sent malformed ${what}: ${e.message}`);
  }
  const ok = shape === 'array' ? Array.isArray(value) : value !== null && typeof value === 'object' && !Array.isArray(value);
  if (!ok) throw new SdkError(`host sent ${what} that is not a JSON ${shape}`);
  return value;
}

/**
 * One answer from the trainer's LLM. `message` and `logprobs` are decoded
 * from the host's JSON text on first access.
 */
export class ChatResult {
  #raw;
  #message;
  #logprobs;
  #tokenIds;
  #promptTokenIds;

  constructor(raw) {
    this.#raw = raw;
    /** "stop", "tool_calls", "length", ... */
    this.finishReason = raw.finishReason;
    /** `{promptTokens, completionTokens, totalTokens}` */
    this.usage = {
      promptTokens: Number(raw.usage?.promptTokens ?? 0),
      completionTokens: Number(raw.usage?.completionTokens ?? 0),
      totalTokens: Number(raw.usage?.totalTokens ?? 0),
    };
  }

  /** The assistant message; append it to the history unchanged. */
  get message() {
    if (this.#message === undefined) {
      try {
        this.#message = JSON.parse(this.#raw.message);
      } catch (e) {
        throw markCaller(new BadResponseError(`host sent a malformed message: ${e.message}`));
      }
    }
    return this.#message;
  }

  /** The assistant message as the host sent it (JSON text). */
  get messageJson() {
    return this.#raw.message;
  }

  /** The message's `tool_calls` (empty when there are none). */
  get toolCalls() {
    const calls = this.message?.tool_calls;
    return Array.isArray(calls) ? calls : [];
  }

  get hasToolCalls() {
    return this.toolCalls.length > 0;
  }

  /** The message's text content, or null. */
  get content() {
    const content = this.message?.content;
    return typeof content === 'string' ? content : null;
  }

  /** Token ids of the completion (an array), or null when the trainer sent none. */
  get tokenIds() {
    if (this.#tokenIds === undefined) this.#tokenIds = this.#raw.tokenIds ? Array.from(this.#raw.tokenIds) : null;
    return this.#tokenIds;
  }

  /** Token ids of the prompt (an array), or null when the trainer sent none. */
  get promptTokenIds() {
    if (this.#promptTokenIds === undefined) {
      this.#promptTokenIds = this.#raw.promptTokenIds ? Array.from(this.#raw.promptTokenIds) : null;
    }
    return this.#promptTokenIds;
  }

  /** The log-probabilities, decoded; null when the trainer sent none (or bad JSON). */
  get logprobs() {
    if (this.#logprobs === undefined) {
      const text = this.#raw.logprobs;
      try {
        this.#logprobs = text == null ? null : JSON.parse(text);
      } catch {
        this.#logprobs = null;
      }
    }
    return this.#logprobs;
  }

  /** The log-probabilities as the trainer sent them (JSON text), or null. */
  get logprobsJson() {
    return this.#raw.logprobs ?? null;
  }
}

/** The agent's only way out of the sandbox, for one rollout. */
export class RolloutContext {
  #host;
  #history;

  constructor(request, host) {
    this.#host = host;
    /** The decoded rollout request (see `decodeRequest`). */
    this.request = request;
    /** Sum of `completionTokens` over this rollout's chat calls so far. */
    this.completionTokens = 0;
    /** Whether the server keeps a debug log; `logEvent` is a no-op when false. */
    this.debugLogEnabled = Boolean(host.debugLogEnabled());
    this.numToolCalls = 0;
    this.toolLatencyMs = 0;
    this.#history = { messages: request.messages, reply: null };
  }

  /**
   * Calls the trainer's LLM with the **full** history (append-only: the
   * previous call's messages, its reply, then what you add) and the request's
   * `completionParams`, or `params` when given (unknown keys such as `tools`
   * or `seed` are forwarded). Returns a `ChatResult`; throws a `ChatError`
   * subclass (`TrainerRejectedError`, `TimeoutError`, ...) on failure.
   */
  chat(messages, params) {
    const request = {
      messages: JSON.stringify(messages),
      params: params == null ? undefined : JSON.stringify(params),
    };
    let raw;
    try {
      raw = this.#host.chat(request);
    } catch (e) {
      const payload = witPayload(e);
      throw payload === undefined ? e : markCaller(chatErrorFromWit(payload));
    }
    const reply = new ChatResult(raw);
    this.completionTokens += reply.usage.completionTokens;
    this.#history = { messages: messages.slice(), reply };
    return reply;
  }

  /**
   * Appends a debug event (`data`: a JSON object) to the rollout's debug
   * log; skipped when the server runs without one (`debugLogEnabled`).
   */
  logEvent(name, data = {}) {
    if (this.debugLogEnabled) this.#host.logEvent(String(name), JSON.stringify(data));
  }

  /** Counts one tool call and its latency; `Toolbox.execute` does this for you. */
  recordToolCall(latencyMs) {
    this.numToolCalls += 1;
    this.toolLatencyMs += Number(latencyMs) || 0;
  }

  /**
   * Ends the rollout successfully: the trainer receives `messages` (which
   * must start with the request's messages), `finishReason` (default
   * "stop"), `reward` (a number or null) and `extraFields` (an object).
   * Throws a `CompleteError` when the host refuses it.
   */
  complete(messages, options = {}) {
    if (!Array.isArray(messages)) throw markCaller(new TypeError('complete: messages must be an array'));
    if (options === null || typeof options !== 'object' || typeof (options.finishReason ?? '') !== 'string') {
      throw markCaller(new TypeError('complete: use complete(messages, {finishReason, reward, extraFields})'));
    }
    const { finishReason = 'stop', reward = null, extraFields = null } = options;
    if (reward !== null && reward !== undefined && typeof reward !== 'number') {
      throw markCaller(new TypeError(`complete: reward must be a number or null, got ${typeof reward}`));
    }
    const extra = extraFields != null && Object.keys(extraFields).length > 0 ? JSON.stringify(extraFields) : undefined;
    this.#send({
      status: 'completed',
      finalMessages: JSON.stringify(messages),
      finishReason,
      errorMessage: undefined,
      reward: reward ?? undefined,
      toolMetrics: this.toolMetrics,
      extraFields: extra,
    });
  }

  /**
   * Ends the rollout as failed: the trainer receives status ERROR with
   * `message`, and `messages` as the history so far (default: the last chat
   * call's messages and its reply).
   */
  error(message, messages = this.history) {
    this.#send({
      status: 'error',
      finalMessages: JSON.stringify(messages),
      finishReason: 'error',
      errorMessage: String(message),
      reward: undefined,
      toolMetrics: this.toolMetrics,
      extraFields: undefined,
    });
  }

  /** The history as of the last chat call: its messages plus its reply (or the request's messages). */
  get history() {
    const { messages, reply } = this.#history;
    return reply === null ? messages.slice() : [...messages, reply.message];
  }

  /** `{numToolCalls, toolLatencyMs}` as the host receives them. */
  get toolMetrics() {
    return { numToolCalls: this.numToolCalls, toolLatencyMs: this.toolLatencyMs };
  }

  #send(completion) {
    try {
      this.#host.complete(completion);
    } catch (e) {
      const payload = witPayload(e);
      // The caller of complete/error is 3 frames up: markCaller, #send, complete.
      throw payload === undefined ? e : markCaller(completeErrorFromWit(payload), 3);
    }
  }
}
