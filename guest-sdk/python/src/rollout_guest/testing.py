"""Run an agent loop under plain CPython against a scripted fake host (no
wasm, no server): for unit tests of the SDK and of plugins.

    host = FakeHost([
        reply(tool_calls=[tool_call("add", {"a": 5, "b": 3})]),
        reply("The answer is #### 8"),
    ])
    error = run_agent(MyLoop(), host, messages=[user("What is 5 + 3?")],
                      metadata={"ground_truth": "8"})
    assert error is None and host.completion.reward == 1.0
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from .agent import run_rollout
from .context import Completion, RawChatResponse, Usage
from .errors import AlreadyCompleted, InvalidCompletion, InvalidRequest


@dataclass
class WitRequest:
    """WIT `rollout-request` as componentize-py passes it (JSON strings)."""

    rollout_id: str = "test-rollout"
    messages: str = "[]"
    completion_params: str = "{}"
    tool_server_url: Optional[str] = None
    max_turns: int = 10
    max_tokens_total: int = 8192
    metadata: str = "{}"


def wit_request(
    messages: Optional[list] = None,
    *,
    rollout_id: str = "test-rollout",
    completion_params: Optional[dict] = None,
    metadata: Optional[dict] = None,
    tool_server_url: Optional[str] = None,
    max_turns: int = 10,
    max_tokens_total: int = 8192,
) -> WitRequest:
    return WitRequest(
        rollout_id=rollout_id,
        messages=json.dumps(messages or []),
        completion_params=json.dumps(completion_params or {}),
        tool_server_url=tool_server_url,
        max_turns=max_turns,
        max_tokens_total=max_tokens_total,
        metadata=json.dumps(metadata or {}),
    )


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def tool_call(name: str, arguments: Any, id: Optional[str] = None) -> dict:
    """An OpenAI tool call; `arguments` a dict (encoded) or raw text."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "id": id or f"call_{name}",
        "type": "function",
        "function": {"name": name, "arguments": text},
    }


def reply(
    content: Optional[str] = None,
    *,
    tool_calls: Optional[list] = None,
    finish_reason: Optional[str] = None,
    usage: tuple = (10, 5, 15),
    token_ids: Optional[list] = None,
    prompt_token_ids: Optional[list] = None,
    logprobs: Any = None,
) -> RawChatResponse:
    """A scripted assistant answer (finish reason "tool_calls" when it has
    tool calls, else "stop")."""
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return RawChatResponse(
        message=json.dumps(message),
        finish_reason=finish_reason or ("tool_calls" if tool_calls else "stop"),
        usage=Usage(*usage),
        token_ids=token_ids,
        prompt_token_ids=prompt_token_ids,
        logprobs=None if logprobs is None else json.dumps(logprobs),
    )


Script = Union[RawChatResponse, dict, str, BaseException, Callable[[list, Optional[dict]], Any]]


@dataclass
class FakeHost:
    """A host whose `chat` answers from a script, recording every call.

    Each script item is a RawChatResponse (see `reply`), an assistant
    message dict, a string (a plain answer), an exception to raise (e.g.
    `TrainerRejected(400, "bad")`), or a function `(messages, params)`
    returning one of those. Like rollout-host it refuses a history that is
    not append-only, a chat after `complete`, a second `complete`, and
    final messages that do not start with the request's."""

    script: list = field(default_factory=list)
    debug_log: bool = True
    #: The request's messages, for the completion check (`run_agent` sets it).
    request_messages: Optional[list] = None
    chat_calls: list = field(default_factory=list)  # (messages, params or None)
    events: list = field(default_factory=list)  # (name, data)
    completions: list = field(default_factory=list)  # accepted Completion records

    def chat(self, messages: str, params: Optional[str]) -> Any:
        history = json.loads(messages)
        decoded_params = None if params is None else json.loads(params)
        if self.completions:
            raise InvalidRequest("chat called after complete")
        if self.chat_calls:
            previous, _, previous_reply = self.chat_calls[-1]
            known = previous + ([previous_reply] if previous_reply is not None else [])
            if history[: len(known)] != known or len(history) < len(known):
                raise InvalidRequest("history is not append-only")
        if not self.script:
            raise InvalidRequest("the fake host's script has no more answers")
        item = self.script.pop(0)
        if callable(item) and not isinstance(item, BaseException):
            item = item(history, decoded_params)
        if isinstance(item, BaseException):
            self.chat_calls.append((history, decoded_params, None))
            raise item
        if isinstance(item, str):
            item = reply(item)
        elif isinstance(item, dict):
            item = RawChatResponse(
                message=json.dumps(item),
                finish_reason="tool_calls" if item.get("tool_calls") else "stop",
            )
        try:
            answer = json.loads(item.message)
        except ValueError:  # a malformed answer, scripted on purpose
            answer = None
        self.chat_calls.append((history, decoded_params, answer))
        return item

    def log_event(self, event: str, data: str) -> None:
        self.events.append((event, json.loads(data)))

    def debug_log_enabled(self) -> bool:
        return self.debug_log

    def complete(self, completion: Completion) -> None:
        if self.completions:
            raise AlreadyCompleted()
        final = json.loads(completion.final_messages)
        if completion.extra_fields is not None:
            json.loads(completion.extra_fields)
        if (
            completion.status == "completed"
            and self.request_messages is not None
            and final[: len(self.request_messages)] != self.request_messages
        ):
            raise InvalidCompletion("final-messages must start with the request's messages")
        self.completions.append(completion)

    # -- reading the result --

    @property
    def completion(self) -> Optional[Completion]:
        """The accepted completion (None before `complete`)."""
        return self.completions[0] if self.completions else None

    @property
    def final_messages(self) -> Optional[list]:
        c = self.completion
        return None if c is None else json.loads(c.final_messages)

    def event_names(self) -> list:
        return [name for name, _ in self.events]


def run_agent(loop: Any, host: FakeHost, messages: Optional[list] = None, **request: Any) -> Optional[str]:
    """Runs `loop` (an AgentLoop instance) for one rollout on `host`, as the
    component would: None on success, else the error text the host would
    get. Keyword arguments go to `wit_request`."""
    r = wit_request(messages, **request)
    host.request_messages = json.loads(r.messages)
    return run_rollout(loop, r, host)


__all__ = [
    "FakeHost",
    "WitRequest",
    "wit_request",
    "reply",
    "tool_call",
    "user",
    "run_agent",
]
