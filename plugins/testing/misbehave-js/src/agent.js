// A JavaScript plugin that misbehaves on request, for the sandbox tests:
// `metadata.mode` picks what `run` does. Any other mode completes at once.

import { AgentLoop, exportAgent } from 'rollout-guest';

// Module state: every rollout must start without what an earlier one added.
const seen = [];

class Misbehave extends AgentLoop {
  name = 'misbehave-js';

  run(ctx) {
    const mode = ctx.request.metadata.mode;
    switch (mode) {
      case 'throw':
        throw new TypeError('misbehave: deliberate error');
      case 'spin':
        for (;;) {}
      case 'alloc': {
        // Keeps every block alive until the memory limit stops it.
        const kept = [];
        for (;;) kept.push(new Array(1 << 20).fill(kept.length));
      }
      case 'recurse': {
        const deeper = (n) => deeper(n + 1) + 1;
        return deeper(0);
      }
      case 'remember': {
        // Writes all over the heap (tens of thousands of objects), then says
        // how many rollouts this instance's module state has seen.
        const id = ctx.request.rolloutId;
        seen.push(Array.from({ length: 20000 }, (_, i) => ({ [`${id}-${i}`]: new Array(8).fill(i) })));
        ctx.complete(ctx.request.messages, { finishReason: 'stop', reward: seen.length });
        return;
      }
      case 'print':
        console.log(`misbehave: hello from ${ctx.request.rolloutId}`);
        console.error('misbehave: on stderr');
        break;
      default:
        break;
    }
    ctx.complete(ctx.request.messages, { finishReason: 'stop', reward: 1.0 });
  }
}

export const agent = exportAgent(Misbehave);
