"""A Python plugin that misbehaves on request, for the sandbox tests:
`metadata.mode` picks what `run` does. Any other mode completes at once."""

import sys

from rollout_guest import AgentLoop, export

# Module state: every rollout must start without what an earlier one added.
_SEEN = []


class Misbehave(AgentLoop):
    name = "misbehave-py"

    def get_tools(self, request):
        return []

    def run(self, ctx):
        mode = ctx.request.metadata.get("mode")
        if mode == "throw":
            raise TypeError("misbehave: deliberate error")
        if mode == "spin":
            while True:
                pass
        if mode == "alloc":
            # Keeps every block alive until the memory limit stops it.
            kept = []
            while True:
                kept.append(bytearray(1 << 20))
        if mode == "recurse":
            sys.setrecursionlimit(1_000_000)

            def deeper(n):
                return deeper(n + 1) + 1

            deeper(0)
        if mode == "remember":
            # Writes all over the heap (tens of thousands of objects: far
            # more scattered pages than one PAGEMAP_SCAN call reports), then
            # says how many rollouts this instance's module state has seen.
            _SEEN.append({f"{ctx.request.rollout_id}-{i}": [i] * 8 for i in range(20_000)})
            ctx.complete(ctx.request.messages, finish_reason="stop", reward=float(len(_SEEN)))
            return
        if mode == "print":
            print(f"misbehave: hello from {ctx.request.rollout_id}")
            print("misbehave: on stderr", file=sys.stderr)
        ctx.complete(ctx.request.messages, finish_reason="stop", reward=1.0)


Agent = export(Misbehave)
