"""The agent loop base class, and the calls the component glue makes on it
(plain Python: no WIT bindings here, so they run under any CPython)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Optional

from . import jsontext
from .context import Host, RolloutContext
from .errors import describe_exception
from .request import RolloutRequest
from .tools import tool_definitions


class AgentLoop:
    """An agent loop: what a plugin implements.

        class Calculator(AgentLoop):
            name = "calculator"

            def get_tools(self, request):
                return TOOLS.definitions()

            def run(self, ctx):
                messages = list(ctx.request.messages)
                reply = ctx.chat(messages)
                messages.append(reply.message)
                ctx.complete(messages, reply.finish_reason)

        Agent = export(Calculator)

    `export` creates the instance once, when the component is built (so
    anything `__init__` loads is baked into the component); each rollout
    runs in a fresh copy of it, so state kept on `self` during a rollout
    never leaks into the next. `run` may also be `async def` (awaiting
    `ctx.chat(...)`). An exception escaping `run` or `get_tools` becomes
    the rollout's error, `Type: message (at file:line in function)`.
    """

    #: A short name for the agent loop, shown in the server's `/health`
    #: (an attribute or a property; the class name when empty).
    name: str = ""

    def get_tools(self, request: RolloutRequest) -> Any:
        """The tools offered for this rollout: OpenAI tool dicts, Tool
        objects or a Toolbox. No tools by default."""
        return []

    def run(self, ctx: RolloutContext) -> Any:
        """The agent loop. End it with `ctx.complete(...)` (or
        `ctx.error(...)`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run(ctx)")


@dataclass
class ToolDefinition:
    """WIT `tool-definition` outside a component (parameters as JSON text)."""

    name: str
    description: str
    parameters: str


def agent_name(loop: Any) -> str:
    """The loop's `name` (attribute, property or method), else its class
    name."""
    try:
        name = getattr(loop, "name", None)
        if callable(name):
            name = name()
    except Exception:
        name = None
    return name if isinstance(name, str) and name else type(loop).__name__


def get_tools_result(loop: Any, wit_request: Any) -> tuple[Optional[list], Optional[str]]:
    """Calls `loop.get_tools` with the decoded request: `(triples, None)`
    with (name, description, parameters JSON) triples, or `(None, error
    text)`."""
    try:
        request = RolloutRequest.from_wit(wit_request)
        definitions = tool_definitions(loop.get_tools(request))
        return [(n, d, jsontext.dumps(p)) for n, d, p in definitions], None
    except BaseException as e:
        return None, describe_exception(e)


def run_rollout(loop: Any, wit_request: Any, host: Host) -> Optional[str]:
    """Runs `loop.run` on a fresh context: None when it returned, else the
    error text of the exception that escaped it."""
    try:
        request = RolloutRequest.from_wit(wit_request)
        ctx = RolloutContext(request, host)
        result = loop.run(ctx)
        if inspect.iscoroutine(result):
            _drive(result)
    except BaseException as e:
        return describe_exception(e)
    return None


def _drive(coroutine: Any) -> Any:
    """Runs an `async def run` to its end. The host calls block, so the
    only awaitables are the SDK's (already resolved) and bare yields such
    as `asyncio.sleep(0)`; there is no event loop in the sandbox."""
    while True:
        try:
            yielded = coroutine.send(None)
        except StopIteration as stop:
            return stop.value
        if yielded is not None:
            coroutine.close()
            raise RuntimeError(
                "run awaited something that needs an event loop "
                f"({type(yielded).__name__}); inside the component only the SDK's calls "
                "(ctx.chat) can be awaited"
            )
