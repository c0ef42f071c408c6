// Errors of the host calls, one class per WIT `chat-error` case, and the
// formatting of an agent's uncaught error for the WIT `run` result.

/** `ctx.chat` failed. `kind` is the WIT `chat-error` case. */
export class ChatError extends Error {
  constructor(message, kind) {
    super(message);
    this.kind = kind;
  }
}

/** The trainer could not be reached (after retries). */
export class TransportError extends ChatError {
  constructor(detail) {
    super(`trainer unreachable: ${detail}`, 'transport');
    this.detail = detail;
  }
}

/** The trainer did not answer in time (after retries). */
export class TimeoutError extends ChatError {
  constructor(detail) {
    super(`trainer timed out: ${detail}`, 'timeout');
    this.detail = detail;
  }
}

/** The trainer answered 4xx: the request was rejected, not retried. */
export class TrainerRejectedError extends ChatError {
  constructor(status, body) {
    super(`trainer rejected the request with HTTP ${status}: ${body}`, 'trainer-rejected');
    this.status = status;
    this.body = body;
  }
}

/** The trainer answered 5xx on every attempt. */
export class TrainerFailedError extends ChatError {
  constructor(status, body) {
    super(`trainer failed with HTTP ${status}: ${body}`, 'trainer-failed');
    this.status = status;
    this.body = body;
  }
}

/** The trainer's 2xx answer was not a usable chat completion. */
export class BadResponseError extends ChatError {
  constructor(detail) {
    super(`unusable trainer response: ${detail}`, 'bad-response');
    this.detail = detail;
  }
}

/**
 * The call itself is invalid: malformed JSON, a history that is not
 * append-only, a call after `complete`, or a per-rollout limit.
 */
export class InvalidRequestError extends ChatError {
  constructor(detail) {
    super(`invalid chat request: ${detail}`, 'invalid-request');
    this.detail = detail;
  }
}

/** `ctx.complete` / `ctx.error` was refused. `kind`: `already-completed` or `invalid`. */
export class CompleteError extends Error {
  constructor(message, kind) {
    super(message);
    this.kind = kind;
  }
}

// Names set on the prototypes, so they survive a minifier.
for (const [cls, name] of [
  [ChatError, 'ChatError'],
  [TransportError, 'TransportError'],
  [TimeoutError, 'TimeoutError'],
  [TrainerRejectedError, 'TrainerRejectedError'],
  [TrainerFailedError, 'TrainerFailedError'],
  [BadResponseError, 'BadResponseError'],
  [InvalidRequestError, 'InvalidRequestError'],
  [CompleteError, 'CompleteError'],
]) {
  Object.defineProperty(cls.prototype, 'name', { value: name, writable: true, configurable: true });
}

/** The class for a WIT `chat-error` (`{tag, val}`). */
export function chatErrorFromWit(error) {
  const { tag, val } = error ?? {};
  switch (tag) {
    case 'transport':
      return new TransportError(val);
    case 'timeout':
      return new TimeoutError(val);
    case 'trainer-rejected':
      return new TrainerRejectedError(val?.status, val?.body);
    case 'trainer-failed':
      return new TrainerFailedError(val?.status, val?.body);
    case 'bad-response':
      return new BadResponseError(val);
    case 'invalid-request':
      return new InvalidRequestError(val);
    default:
      return new ChatError(`chat failed: ${safeJson(error)}`, String(tag));
  }
}

/** The error for a WIT `complete-error` (`{tag, val}`). */
export function completeErrorFromWit(error) {
  const { tag, val } = error ?? {};
  if (tag === 'already-completed') {
    return new CompleteError('the rollout was already completed', tag);
  }
  if (tag === 'invalid') {
    return new CompleteError(String(val), tag);
  }
  return new CompleteError(`complete failed: ${safeJson(error)}`, String(tag));
}

/**
 * The WIT error payload of an error thrown by an import (componentize-js
 * throws an Error with an own `payload` property), or undefined.
 */
export function witPayload(e) {
  return e !== null && typeof e === 'object' && Object.hasOwn(e, 'payload') ? e.payload : undefined;
}

/** An error of the SDK's own checks, reported by its message alone (internal). */
export class SdkError extends Error {}

const CALLER = Symbol('rollout-guest.caller');

/**
 * Records on `error` the frame of whoever called the SDK method that throws
 * it, so the agent's error report points at the agent's code, not the SDK's.
 * `depth`: frames between this function and that caller.
 */
export function markCaller(error, depth = 2) {
  const frames = stackFrames(new Error().stack);
  // frames[0] is this function, frames[depth - 1] the SDK method.
  const frame = frames[depth];
  if (frame !== undefined) {
    Object.defineProperty(error, CALLER, { value: frame });
  }
  return error;
}

/** The frames of a V8 (`    at f (file:1:2)`) or SpiderMonkey (`f@file:1:2`) stack. */
export function stackFrames(stack) {
  if (typeof stack !== 'string') return [];
  const lines = stack.split('\n');
  const v8 = lines.filter((l) => /^\s+at /.test(l)).map((l) => l.trim().slice(3));
  if (v8.length > 0) return v8;
  return lines.map((l) => l.trim()).filter((l) => /@.*:\d+(:\d+)?$/.test(l));
}

/**
 * An uncaught error as the WIT `run` / `get-tools` error string: the error's
 * name, message and the frame it was thrown from, e.g.
 * `TypeError: x is undefined (at run@calc_js.js:120:5)`.
 */
export function describeError(e) {
  if (e instanceof Error || (e !== null && typeof e === 'object' && 'message' in e && 'stack' in e)) {
    const name = e.name || 'Error';
    const head = e.message ? `${name}: ${e.message}` : name;
    const frame = e[CALLER] ?? stackFrames(e.stack)[0];
    return frame ? `${head} (at ${frame})` : head;
  }
  return `uncaught exception: ${typeof e === 'string' ? e : safeJson(e)}`;
}

function safeJson(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
