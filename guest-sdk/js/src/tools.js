// Tools the agent runs inside its sandbox: declared once (name, description,
// JSON schema, handler), offered to the model, and run on its tool calls.
// Behaviour and messages match the Rust SDK's `Toolbox` (guest-sdk/src/tools.rs).

import { markCaller } from './errors.js';

/** A tool's failure; the model sees `Error: <message>` as the tool result. */
export class ToolError extends Error {}
Object.defineProperty(ToolError.prototype, 'name', { value: 'ToolError', writable: true, configurable: true });

/**
 * Declares a tool: `tool({name, description, parameters}, handler)`.
 * `parameters` is the JSON Schema of the arguments object `handler(args)`
 * receives; `handler` returns the result (a string, number, or any JSON
 * value) or throws (a `ToolError`, or any error) to report a failure.
 */
export function tool({ name, description = '', parameters = { type: 'object', properties: {} } }, handler) {
  if (typeof name !== 'string' || name === '') {
    throw markCaller(new TypeError('tool: name must be a non-empty string'));
  }
  if (typeof handler !== 'function') {
    throw markCaller(new TypeError(`tool '${name}': the handler must be a function`));
  }
  if (parameters === null || typeof parameters !== 'object' || Array.isArray(parameters)) {
    throw markCaller(new TypeError(`tool '${name}': parameters must be a JSON Schema object`));
  }
  return Object.freeze({ name, description: String(description), parameters, handler });
}

/** The agent's tools; turns the model's tool calls into `role: tool` messages. */
export class Toolbox {
  /** `new Toolbox([tool(...), ...])` */
  constructor(tools = []) {
    this.tools = [];
    for (const t of tools) this.add(t);
  }

  /** Adds a tool: `add(tool(spec, handler))` or `add(spec, handler)`. Returns the toolbox. */
  add(toolOrSpec, handler) {
    const t = handler === undefined ? toolOrSpec : tool(toolOrSpec, handler);
    if (t === null || typeof t !== 'object' || typeof t.handler !== 'function' || typeof t.name !== 'string') {
      throw markCaller(new TypeError('Toolbox.add: expected tool({name, description, parameters}, handler)'));
    }
    if (this.tools.some((existing) => existing.name === t.name)) {
      throw markCaller(new TypeError(`Toolbox.add: a tool named '${t.name}' is already declared`));
    }
    this.tools.push(t);
    return this;
  }

  /** The OpenAI tool objects to return from `getTools`. */
  definitions() {
    return this.tools.map(({ name, description, parameters }) => ({
      type: 'function',
      function: { name, description, parameters },
    }));
  }

  /**
   * Runs one tool by name and returns its result. `args` is the tool call's
   * `arguments`: a JSON string (as OpenAI sends it) or an object. Throws a
   * `ToolError` for an unknown tool or bad arguments; the handler's own
   * errors propagate.
   */
  call(name, args) {
    const t = this.tools.find((candidate) => candidate.name === name);
    if (t === undefined) throw new ToolError(`unknown tool '${name}'`);
    const result = t.handler(parseArguments(args));
    if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
      result.then(undefined, () => {}); // its failure is reported below, not as an unhandled rejection
      throw new ToolError(`tool '${name}' returned a Promise; tool handlers must be synchronous`);
    }
    return result;
  }

  /**
   * Executes the tool calls of an assistant reply in order and returns one
   * `role: tool` message per call. Failures (unknown tool, bad arguments,
   * a thrown error) become `"Error: ..."` content, so the rollout goes on and
   * the model sees the error. Each call is counted in `ctx`'s tool metrics.
   * `toolCalls`: the reply (`ctx.chat`'s result) or its `toolCalls` array.
   */
  execute(ctx, toolCalls) {
    const calls = Array.isArray(toolCalls) ? toolCalls : (toolCalls?.toolCalls ?? []);
    return calls.map((call) => {
      const start = now();
      const id = typeof call?.id === 'string' ? call.id : '';
      const fn = call?.function;
      let content;
      try {
        const name = fn?.name;
        if (typeof name !== 'string') throw new ToolError('tool call has no function name');
        content = formatToolValue(this.call(name, fn.arguments ?? null));
      } catch (e) {
        content = `Error: ${toolErrorText(e)}`;
      }
      ctx?.recordToolCall(now() - start);
      return { role: 'tool', content, tool_call_id: id };
    });
  }
}

function parseArguments(args) {
  if (args === null || args === undefined) return {};
  if (typeof args === 'string') {
    if (args.trim() === '') return {};
    let parsed;
    try {
      parsed = JSON.parse(args);
    } catch (e) {
      throw new ToolError(`arguments are not valid JSON: ${jsonErrorText(e)}`);
    }
    if (isPlainObject(parsed)) return parsed;
    throw new ToolError('arguments must be a JSON object');
  }
  if (isPlainObject(args)) return args;
  throw new ToolError('arguments must be a JSON object');
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// SpiderMonkey: "JSON.parse: unexpected character at line 1 column 2 of the
// JSON data"; shortened to serde_json's style ("... at line 1 column 2").
function jsonErrorText(e) {
  return String(e?.message ?? e)
    .replace(/^JSON\.parse: /, '')
    .replace(/ of the JSON data$/, '');
}

function toolErrorText(e) {
  if (e instanceof Error) {
    return e instanceof ToolError || e.name === 'Error' ? e.message : `${e.name}: ${e.message}`;
  }
  return String(e);
}

function now() {
  return globalThis.performance?.now?.() ?? Date.now();
}

/**
 * Reads a numeric argument (a JSON number, or a string holding one); throws
 * a `ToolError` naming the argument when it is missing or not a number.
 */
export function numberArg(args, name) {
  const value = args !== null && typeof args === 'object' && Object.hasOwn(args, name) ? args[name] : undefined;
  if (value === undefined) throw new ToolError(`missing required argument '${name}'`);
  if (typeof value === 'number') {
    if (Number.isFinite(value)) return value;
    throw new ToolError(`'${name}' is not a finite number`);
  }
  if (typeof value === 'string') {
    const n = parseNumber(value);
    if (n === null) throw new ToolError(`'${name}' must be a number, got "${value}"`);
    return n;
  }
  throw new ToolError(`'${name}' must be a number, got ${jsonText(value)}`);
}

const DECIMAL = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

/**
 * A decimal number as Rust's `str::parse::<f64>` reads it (after trimming
 * whitespace), when finite; otherwise null. Stricter than `Number(text)`,
 * which takes "" as 0 and reads hex.
 */
export function parseNumber(text) {
  if (typeof text !== 'string') return null;
  const s = text.trim();
  if (!DECIMAL.test(s)) return null;
  const n = Number(s);
  return Number.isFinite(n) ? n : null;
}

/**
 * Renders a tool result for the model as the Rust SDK does: strings as they
 * are, whole numbers below 1e15 plainly (`8`), other numbers as Rust prints
 * an f64 (`2.5`, `1e+16`), anything else as JSON.
 */
export function formatToolValue(value) {
  switch (typeof value) {
    case 'string':
      return value;
    case 'number':
      if (!Number.isFinite(value)) return 'null';
      if (Number.isInteger(value) && Math.abs(value) < 1e15) return String(value);
      return rustF64(value);
    case 'bigint':
      return String(value);
    case 'undefined':
      return 'null';
    default:
      return jsonText(value);
  }
}

/**
 * `f` as serde_json writes an f64 (shortest round-trip digits; plain
 * notation for 1e-5 <= |f| < 1e16, with `.0` on whole numbers; otherwise
 * `1.5e+16` / `1e-7`).
 */
export function rustF64(f) {
  if (!Number.isFinite(f)) return 'null';
  if (f === 0) return Object.is(f, -0) ? '-0.0' : '0.0';
  const sign = f < 0 ? '-' : '';
  const exponential = Math.abs(f).toExponential(); // shortest digits: "d.ddde±x"
  const [mantissa, exp] = exponential.split('e');
  const e = Number(exp);
  if (e < -5 || e > 15) return sign + exponential;
  const digits = mantissa.replace('.', '');
  if (digits.length - 1 <= e) return `${sign}${digits}${'0'.repeat(e - (digits.length - 1))}.0`;
  if (e >= 0) return `${sign}${digits.slice(0, e + 1)}.${digits.slice(e + 1)}`;
  return `${sign}0.${'0'.repeat(-e - 1)}${digits}`;
}

/** Compact JSON text of a value (`null` for what JSON cannot hold). */
export function jsonText(value) {
  return JSON.stringify(value) ?? 'null';
}
