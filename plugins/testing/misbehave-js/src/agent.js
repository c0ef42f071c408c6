// A JavaScript plugin that misbehaves on request, for the sandbox tests:
// `metadata.mode` picks what `run` does. Any other mode completes at once.

import { AgentLoop, exportAgent } from 'rollout-guest';

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
