// The agent base class and the component glue: `exportAgent(Agent)` is the
// WIT `agent` interface object componentize-js expects the module to export
// (`export const agent = exportAgent(MyAgent)`).

import * as witHost from '#host';
import { RolloutContext, decodeRequest } from './context.js';
import { SdkError, describeError } from './errors.js';
import { Toolbox } from './tools.js';

/**
 * An agent loop: what a plugin implements. A new instance is made for each
 * call (every rollout runs in a fresh sandboxed instance anyway).
 */
export class AgentLoop {
  /** A short name for the agent loop, shown in the server's `/health` (default: the class name). */
  get name() {
    return this.constructor.name;
  }

  set name(value) {
    Object.defineProperty(this, 'name', { value, writable: true, enumerable: true, configurable: true });
  }

  /**
   * The tools offered for this rollout (returned to the trainer at init):
   * OpenAI tool objects (`{type: 'function', function: {name, description,
   * parameters}}`), e.g. `toolbox.definitions()`.
   */
  getTools(_request) {
    return [];
  }

  /**
   * The agent loop (may be async). End it with `ctx.complete(...)` or
   * `ctx.error(...)`; an uncaught error fails the rollout with the error's
   * name, message and frame.
   */
  run(_ctx) {
    throw new Error(`${this.constructor.name}.run is not implemented`);
  }
}

/**
 * The WIT `agent` interface for an agent class (or instance):
 * `export const agent = exportAgent(MyAgent);`. `host` replaces the
 * component's imports (tests pass a `FakeHost`).
 */
export function exportAgent(Agent, { host = witHost } = {}) {
  const make = () => (typeof Agent === 'function' ? new Agent() : Agent);
  // componentize-js calls these unbound; results are returned as
  // `{tag: 'ok' | 'err', val}`, so nothing is thrown across the boundary.
  return {
    name() {
      return String(make().name);
    },
    async getTools(raw) {
      try {
        const request = decodeRequest(raw);
        return { tag: 'ok', val: witTools(await make().getTools(request)) };
      } catch (e) {
        return { tag: 'err', val: errorText(e) };
      }
    },
    async run(raw) {
      try {
        const ctx = new RolloutContext(decodeRequest(raw), host);
        await make().run(ctx);
        return { tag: 'ok', val: undefined };
      } catch (e) {
        return { tag: 'err', val: errorText(e) };
      }
    },
  };
}

// Errors of the SDK's own checks (decoding, tool lists) are plain messages.
function errorText(e) {
  return e instanceof SdkError ? e.message : describeError(e);
}

/** OpenAI tool objects (or `{name, description, parameters}`, or a Toolbox) as WIT tool definitions. */
export function witTools(tools) {
  const list = tools instanceof Toolbox ? tools.definitions() : tools;
  if (!Array.isArray(list)) throw new SdkError(`getTools must return an array of tools, got ${typeof list}`);
  return list.map((t, i) => {
    const fn = t?.type === 'function' && t.function ? t.function : t;
    const name = fn?.name;
    if (typeof name !== 'string' || name === '') {
      throw new SdkError(`getTools: tool ${i} has no name (expected {type: 'function', function: {name, description, parameters}})`);
    }
    const parameters = fn.parameters ?? { type: 'object', properties: {} };
    if (parameters === null || typeof parameters !== 'object' || Array.isArray(parameters)) {
      throw new SdkError(`getTools: the parameters of tool '${name}' are not a JSON Schema object`);
    }
    return { name, description: String(fn.description ?? ''), parameters: JSON.stringify(parameters) };
  });
}
