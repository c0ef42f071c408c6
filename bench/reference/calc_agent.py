"""The calculator agent of plugins/calc, written for the reference server:
the Osmosis Python SDK's RolloutAgentLoop (osmosis-ai 0.2.17), served with

    osmosis serve -m calc_agent:agent_loop

Tools: add, subtract, multiply, divide. Reward: the number after the last
`####` in the last assistant message against `metadata.ground_truth`. The
tool results are written as the Rust guest SDK writes them (`8`, not `8.0`;
failures as `Error: <message>`), so both servers send the trainer the same
conversation.
"""

from __future__ import annotations

import math
import time
from typing import Any

from osmosis_ai.rollout import (
    OpenAIFunctionParametersSchema,
    OpenAIFunctionPropertySchema,
    OpenAIFunctionSchema,
    OpenAIFunctionToolSchema,
    RolloutAgentLoop,
    RolloutContext,
    RolloutRequest,
    RolloutResult,
    ToolArgumentError,
    create_tool_error_result,
    create_tool_result,
    get_tool_call_info,
)


class ToolError(Exception):
    """A tool's failure; the model sees `Error: <message>` as the result."""


def _finite(result: float) -> float:
    if not math.isfinite(result):
        raise ToolError("result is not a finite number")
    return result


def _divide(a: float, b: float) -> float:
    if b == 0.0:
        raise ToolError("division by zero")
    return _finite(a / b)


# name -> (description, function)
TOOLS = {
    "add": ("Add two numbers", lambda a, b: _finite(a + b)),
    "subtract": ("Subtract the second number from the first", lambda a, b: _finite(a - b)),
    "multiply": ("Multiply two numbers", lambda a, b: _finite(a * b)),
    "divide": ("Divide the first number by the second", _divide),
}


def _tool_schema(name: str, description: str) -> OpenAIFunctionToolSchema:
    return OpenAIFunctionToolSchema(
        type="function",
        function=OpenAIFunctionSchema(
            name=name,
            description=description,
            parameters=OpenAIFunctionParametersSchema(
                type="object",
                properties={
                    "a": OpenAIFunctionPropertySchema(type="number", description="First number"),
                    "b": OpenAIFunctionPropertySchema(type="number", description="Second number"),
                },
                required=["a", "b"],
            ),
        ),
    )


TOOL_SCHEMAS = [_tool_schema(name, description) for name, (description, _) in TOOLS.items()]


def number_arg(args: dict[str, Any], name: str) -> float:
    """A numeric argument: a JSON number, or a string holding one."""
    if name not in args:
        raise ToolError(f"missing required argument '{name}'")
    value = args[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            parsed = math.nan
        if math.isfinite(parsed):
            return parsed
        raise ToolError(f"'{name}' must be a number, got \"{value}\"")
    raise ToolError(f"'{name}' must be a number, got {value!r}")


def format_number(value: float) -> str:
    """`8` for a whole number (as the Rust guest SDK writes it), else `2.5`."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def run_tool_call(tool_call: dict[str, Any]) -> dict[str, str]:
    """One `role: tool` message for a tool call; failures become `Error: ...`."""
    call_id = tool_call.get("id", "")
    try:
        call_id, name, args = get_tool_call_info(tool_call)
        if name not in TOOLS:
            raise ToolError(f"unknown tool '{name}'")
        _, function = TOOLS[name]
        result = function(number_arg(args, "a"), number_arg(args, "b"))
    except (ToolError, ToolArgumentError) as e:
        return create_tool_error_result(call_id, str(e))
    return create_tool_result(call_id, format_number(result))


class CalculatorAgentLoop(RolloutAgentLoop):
    name = "calculator"

    def get_tools(self, request: RolloutRequest) -> list[OpenAIFunctionToolSchema]:
        return TOOL_SCHEMAS

    async def run(self, ctx: RolloutContext) -> RolloutResult:
        request = ctx.request
        messages = list(request.messages)
        finish_reason = "max_turns"
        logging = ctx.debug_enabled

        for turn in range(request.max_turns):
            if logging:
                ctx.log_event("pre_llm", turn=turn, num_messages=len(messages))
            # The full history and the rollout's sampling parameters. The
            # tools reach the trainer in the init answer: the SDK's
            # CompletionsRequest has no `tools` field and drops one.
            result = await ctx.chat(messages, **request.completion_params)
            if logging:
                ctx.log_event(
                    "llm_response",
                    turn=turn,
                    has_tool_calls=result.has_tool_calls,
                    num_tool_calls=len(result.tool_calls),
                    finish_reason=result.finish_reason,
                    completion_tokens=result.usage.get("completion_tokens", 0),
                )
            messages.append(result.message)
            if not result.has_tool_calls:
                finish_reason = result.finish_reason
                break

            results = []
            for tool_call in result.tool_calls:
                start = time.monotonic()
                results.append(run_tool_call(tool_call))
                ctx.record_tool_call(latency_ms=(time.monotonic() - start) * 1000.0)
            if logging:
                ctx.log_event(
                    "tool_results",
                    turn=turn,
                    num_tool_results=len(results),
                    results=[m["content"] for m in results],
                )
            messages.extend(results)
            if ctx.llm.get_metrics().response_tokens >= request.max_tokens_total:
                finish_reason = "max_tokens"
                break

        score = reward(messages, request.metadata)
        if logging:
            ctx.log_event(
                "rollout_complete",
                finish_reason=finish_reason,
                reward=score,
                num_messages=len(messages),
            )
        return ctx.complete(messages, finish_reason=finish_reason, reward=score)


def reward(messages: list[dict[str, Any]], metadata: dict[str, Any]) -> float | None:
    """1.0 when the last assistant message's `#### <number>` equals
    `metadata.ground_truth` (as numbers, |diff| < 1e-7), else 0.0; None
    without a ground truth."""
    if "ground_truth" not in metadata:
        return None
    truth_value = metadata["ground_truth"]
    if isinstance(truth_value, bool):
        truth = None
    elif isinstance(truth_value, (int, float)):
        truth = float(truth_value)
    elif isinstance(truth_value, str):
        truth = parse_number(truth_value)
    else:
        truth = None
    answer = None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, str):
                answer = extract_answer(content)
            break
    if answer is not None and truth is not None and abs(answer - truth) < 1e-7:
        return 1.0
    return 0.0


_ANSWER_CHARS = set("0123456789-+.,eE")


def extract_answer(text: str) -> float | None:
    """The number following the last `####` in `text`."""
    _, sep, after = text.rpartition("####")
    if not sep:
        return None
    token = []
    for c in after.lstrip():
        if c not in _ANSWER_CHARS:
            break
        token.append(c)
    return parse_number("".join(token))


def parse_number(s: str) -> float | None:
    """A finite number, commas ignored."""
    try:
        value = float(s.strip().replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


agent_loop = CalculatorAgentLoop()
