// rollout-guest: write Remote Rollout agent loops for rollout-host in
// JavaScript, built into a component with componentize-js.
//
//   import { AgentLoop, Toolbox, tool, numberArg, exportAgent } from 'rollout-guest';
//
//   const tools = new Toolbox([
//     tool({ name: 'double', description: 'Double a number',
//            parameters: { type: 'object', properties: { x: { type: 'number' } }, required: ['x'] } },
//          (args) => numberArg(args, 'x') * 2),
//   ]);
//
//   class Doubler extends AgentLoop {
//     name = 'doubler';
//     getTools() { return tools.definitions(); }
//     run(ctx) {
//       const messages = [...ctx.request.messages];
//       for (let turn = 0; turn < ctx.request.maxTurns; turn++) {
//         const reply = ctx.chat(messages);           // the trainer's LLM
//         messages.push(reply.message);
//         if (!reply.hasToolCalls) return ctx.complete(messages, { finishReason: reply.finishReason });
//         messages.push(...tools.execute(ctx, reply)); // role: tool messages
//       }
//       ctx.complete(messages, { finishReason: 'max_turns' });
//     }
//   }
//
//   export const agent = exportAgent(Doubler);

export { AgentLoop, exportAgent, witTools } from './agent.js';
export { ChatResult, RolloutContext, decodeRequest } from './context.js';
export {
  BadResponseError,
  ChatError,
  CompleteError,
  InvalidRequestError,
  TimeoutError,
  TrainerFailedError,
  TrainerRejectedError,
  TransportError,
  describeError,
} from './errors.js';
export { ToolError, Toolbox, formatToolValue, jsonText, numberArg, parseNumber, rustF64, tool } from './tools.js';
