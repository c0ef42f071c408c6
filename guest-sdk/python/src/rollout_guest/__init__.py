"""Write Remote Rollout agent loops for rollout-host in Python, built into
WebAssembly components with componentize-py (world
`osmosis:rollout/rollout-agent@0.1.0`, the same WIT as the Rust SDK).

    from rollout_guest import AgentLoop, Toolbox, export, tool

    @tool
    def double(x: float) -> float:
        '''Double a number

        Args:
            x: The number
        '''
        return x * 2

    TOOLS = Toolbox(double)

    class Doubler(AgentLoop):
        name = "doubler"

        def get_tools(self, request):
            return TOOLS.definitions()

        def run(self, ctx):
            messages = list(ctx.request.messages)
            for _ in range(ctx.request.max_turns):
                reply = ctx.chat(messages)            # the trainer's LLM
                messages.append(reply.message)
                if not reply.has_tool_calls:
                    return ctx.complete(messages, reply.finish_reason)
                messages.extend(TOOLS.execute(ctx, reply.tool_calls))
            ctx.complete(messages, "max_turns")

    Agent = export(Doubler)   # what componentize-py looks for

Build: `componentize-py -d wit -w rollout-agent componentize -p . -p <sdk>/src app -o app.wasm`.
"""

from .agent import AgentLoop, ToolDefinition
from .component import AgentFailure, export
from .context import ChatResult, Completion, RawChatResponse, RolloutContext, Usage
from .errors import (
    AlreadyCompleted,
    BadResponse,
    ChatError,
    CompleteError,
    InvalidCompletion,
    InvalidRequest,
    RolloutError,
    Timeout,
    ToolError,
    TrainerFailed,
    TrainerRejected,
    Transport,
    describe_exception,
)
from .jsontext import format_tool_value
from .request import RolloutRequest
from .tools import Tool, Toolbox, number_arg, parse_docstring, tool

__version__ = "0.1.0"

__all__ = [
    "AgentLoop",
    "export",
    "AgentFailure",
    "RolloutContext",
    "RolloutRequest",
    "ChatResult",
    "Usage",
    "Completion",
    "RawChatResponse",
    "ToolDefinition",
    "RolloutError",
    "ChatError",
    "Transport",
    "Timeout",
    "TrainerRejected",
    "TrainerFailed",
    "BadResponse",
    "InvalidRequest",
    "CompleteError",
    "AlreadyCompleted",
    "InvalidCompletion",
    "ToolError",
    "Tool",
    "Toolbox",
    "tool",
    "number_arg",
    "parse_docstring",
    "format_tool_value",
    "describe_exception",
]
