"""The calculator agent loop in Python (the port of plugins/calc). Tools:
add, subtract, multiply, divide. Reward: the number after the last `####`
in the last assistant message against `metadata.ground_truth`.

Build: ./build.sh (componentize-py; writes target/calc_py.wasm).
"""

import math

from rollout_guest import AgentLoop, ToolError, Toolbox, export, tool


def _finite(result: float) -> float:
    if not math.isfinite(result):
        raise ToolError("result is not a finite number")
    return result


@tool
def add(a: float, b: float) -> float:
    """Add two numbers

    Args:
        a: First number
        b: Second number
    """
    return _finite(a + b)


@tool
def subtract(a: float, b: float) -> float:
    """Subtract the second number from the first

    Args:
        a: First number
        b: Second number
    """
    return _finite(a - b)


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers

    Args:
        a: First number
        b: Second number
    """
    return _finite(a * b)


@tool
def divide(a: float, b: float) -> float:
    """Divide the first number by the second

    Args:
        a: First number
        b: Second number
    """
    if b == 0.0:
        raise ToolError("division by zero")
    return _finite(a / b)


TOOLS = Toolbox(add, subtract, multiply, divide)


class CalculatorAgentLoop(AgentLoop):
    name = "calculator"

    def get_tools(self, request):
        return TOOLS.definitions()

    def run(self, ctx):
        max_turns, max_tokens_total = ctx.request.max_turns, ctx.request.max_tokens_total
        messages = list(ctx.request.messages)
        finish_reason = "max_turns"
        # The events are built only when the server keeps a debug log.
        logging = ctx.debug_log_enabled

        for turn in range(max_turns):
            if logging:
                ctx.log_event("pre_llm", turn=turn, num_messages=len(messages))
            reply = ctx.chat(messages)
            tool_calls = reply.tool_calls
            if logging:
                ctx.log_event(
                    "llm_response",
                    turn=turn,
                    has_tool_calls=bool(tool_calls),
                    num_tool_calls=len(tool_calls),
                    finish_reason=reply.finish_reason,
                    completion_tokens=reply.usage.completion_tokens,
                )
            messages.append(reply.message)
            if not tool_calls:
                finish_reason = reply.finish_reason
                break
            results = TOOLS.execute(ctx, tool_calls)
            if logging:
                ctx.log_event(
                    "tool_results",
                    turn=turn,
                    num_tool_results=len(results),
                    results=[m["content"] for m in results],
                )
            messages.extend(results)
            if ctx.completion_tokens >= max_tokens_total:
                finish_reason = "max_tokens"
                break

        score = reward(messages, ctx.request.metadata)
        if logging:
            ctx.log_event(
                "rollout_complete",
                finish_reason=finish_reason,
                reward=score,
                num_messages=len(messages),
            )
        ctx.complete(messages, finish_reason, score)


def reward(messages, metadata):
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


# Rust's `char::is_whitespace` (Unicode White_Space), which `str.strip()`
# does not match exactly.
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_ANSWER_CHARS = set("0123456789-+.,eE")


def extract_answer(text):
    """The number following the last `####` in `text`."""
    head, sep, after = text.rpartition("####")
    if not sep:
        return None
    token = []
    for c in after.lstrip(_WHITESPACE):
        if c not in _ANSWER_CHARS:
            break
        token.append(c)
    return parse_number("".join(token))


def parse_number(s):
    """A finite number, commas ignored (as Rust's `str::parse::<f64>`)."""
    s = s.strip(_WHITESPACE).replace(",", "")
    if not s.isascii() or "_" in s or s != s.strip():
        return None
    try:
        value = float(s)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


Agent = export(CalculatorAgentLoop)
