// The calculator agent, in JavaScript: the same tools, loop, finish reasons,
// reward and debug events as the Rust calculator (plugins/calc/src/agent.rs).
// Tools: add, subtract, multiply, divide. Reward: the number after the last
// `####` in the last assistant message against `metadata.ground_truth`.

import { AgentLoop, ToolError, Toolbox, exportAgent, numberArg, parseNumber, tool } from 'rollout-guest';

const schema = {
  type: 'object',
  properties: {
    a: { type: 'number', description: 'First number' },
    b: { type: 'number', description: 'Second number' },
  },
  required: ['a', 'b'],
};

function binaryTool(name, description, op) {
  return tool({ name, description, parameters: schema }, (args) => {
    const result = op(numberArg(args, 'a'), numberArg(args, 'b'));
    if (!Number.isFinite(result)) throw new ToolError('result is not a finite number');
    return result;
  });
}

export const tools = new Toolbox([
  binaryTool('add', 'Add two numbers', (a, b) => a + b),
  binaryTool('subtract', 'Subtract the second number from the first', (a, b) => a - b),
  binaryTool('multiply', 'Multiply two numbers', (a, b) => a * b),
  binaryTool('divide', 'Divide the first number by the second', (a, b) => {
    if (b === 0) throw new ToolError('division by zero');
    return a / b;
  }),
]);

export class Calculator extends AgentLoop {
  name = 'calculator';

  getTools(_request) {
    return tools.definitions();
  }

  run(ctx) {
    const { maxTurns, maxTokensTotal } = ctx.request;
    const messages = [...ctx.request.messages];
    let finishReason = 'max_turns';
    // The events are built only when the server keeps a debug log.
    const logging = ctx.debugLogEnabled;

    for (let turn = 0; turn < maxTurns; turn++) {
      if (logging) ctx.logEvent('pre_llm', { turn, num_messages: messages.length });
      const reply = ctx.chat(messages);
      const toolCalls = reply.toolCalls;
      if (logging) {
        ctx.logEvent('llm_response', {
          turn,
          has_tool_calls: toolCalls.length > 0,
          num_tool_calls: toolCalls.length,
          finish_reason: reply.finishReason,
          completion_tokens: reply.usage.completionTokens,
        });
      }
      messages.push(reply.message);
      if (toolCalls.length === 0) {
        finishReason = reply.finishReason;
        break;
      }
      const results = tools.execute(ctx, toolCalls);
      if (logging) {
        ctx.logEvent('tool_results', {
          turn,
          num_tool_results: results.length,
          results: results.map((m) => m.content),
        });
      }
      messages.push(...results);
      if (ctx.completionTokens >= maxTokensTotal) {
        finishReason = 'max_tokens';
        break;
      }
    }

    const r = reward(messages, ctx.request);
    if (logging) {
      ctx.logEvent('rollout_complete', { finish_reason: finishReason, reward: r, num_messages: messages.length });
    }
    ctx.complete(messages, { finishReason, reward: r });
  }
}

/**
 * 1.0 when the last assistant message's `#### <number>` equals
 * `metadata.ground_truth` (as numbers, |diff| < 1e-7), else 0.0; null
 * without a ground truth.
 */
export function reward(messages, request) {
  if (!Object.hasOwn(request.metadata, 'ground_truth')) return null;
  const truth = request.metadata.ground_truth;
  const expected = typeof truth === 'number' ? truth : typeof truth === 'string' ? number(truth) : null;
  const last = messages.findLast((m) => m?.role === 'assistant');
  const answer = typeof last?.content === 'string' ? extractAnswer(last.content) : null;
  return answer !== null && expected !== null && Math.abs(answer - expected) < 1e-7 ? 1.0 : 0.0;
}

/** The number following the last `####` in `text`, or null. */
export function extractAnswer(text) {
  const at = text.lastIndexOf('####');
  if (at < 0) return null;
  const token = text.slice(at + 4).trimStart().match(/^[0-9+\-.,eE]*/)[0];
  return number(token);
}

function number(text) {
  return parseNumber(text.trim().replaceAll(',', ''));
}

export const agent = exportAgent(Calculator);
