"""The agent's handle on its rollout: the request, the host calls (chat,
log-event, complete) and the tool metrics the host cannot see."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Protocol, Sequence

from . import jsontext
from .errors import BadResponse
from .request import RolloutRequest


@dataclass
class Usage:
    """Token counts of one chat completion. Also readable as a dict
    (`usage["completion_tokens"]`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __getitem__(self, key: str) -> int:
        if key not in ("prompt_tokens", "completion_tokens", "total_tokens"):
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


class ChatResult:
    """One answer from the trainer's LLM (`choices[0]`).

    `message` is the assistant message (a dict): append it to the history
    unchanged. The log-probabilities stay JSON text until `logprobs` is
    first read (trainers send them for every token; most agents never read
    them). A ChatResult can also be awaited (it is already there), so
    `result = await ctx.chat(messages)` works in an `async def run`.
    """

    __slots__ = (
        "message",
        "finish_reason",
        "usage",
        "token_ids",
        "prompt_token_ids",
        "logprobs_json",
        "_logprobs",
    )

    _UNDECODED = object()

    def __init__(
        self,
        message: dict,
        finish_reason: str,
        usage: Usage,
        token_ids: Optional[list] = None,
        prompt_token_ids: Optional[list] = None,
        logprobs_json: Optional[str] = None,
    ) -> None:
        self.message = message
        self.finish_reason = finish_reason
        self.usage = usage
        self.token_ids = token_ids
        self.prompt_token_ids = prompt_token_ids
        self.logprobs_json = logprobs_json
        self._logprobs: Any = ChatResult._UNDECODED

    @property
    def tool_calls(self) -> list:
        """The message's `tool_calls` (empty when there are none)."""
        calls = self.message.get("tool_calls")
        return calls if isinstance(calls, list) else []

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.tool_calls)

    @property
    def content(self) -> Optional[str]:
        """The message's text content, if any."""
        content = self.message.get("content")
        return content if isinstance(content, str) else None

    @property
    def logprobs(self) -> Any:
        """The log-probabilities, decoded on first access (None when the
        trainer sent none, or sent something that is not JSON)."""
        if self._logprobs is ChatResult._UNDECODED:
            value = None
            if self.logprobs_json is not None:
                try:
                    value = json.loads(self.logprobs_json)
                except ValueError:
                    value = None
            self._logprobs = value
        return self._logprobs

    def __await__(self) -> Iterator[Any]:
        return self
        yield  # pragma: no cover  (makes this a generator)

    def __repr__(self) -> str:
        return (
            f"ChatResult(finish_reason={self.finish_reason!r}, message={self.message!r}, "
            f"usage={self.usage!r})"
        )


@dataclass
class RawChatResponse:
    """What a host's `chat` returns: WIT `chat-response` (the message as JSON
    text). The component's host returns the WIT record itself, which has the
    same attributes."""

    message: str
    finish_reason: str = "stop"
    usage: Usage = None  # type: ignore[assignment]
    token_ids: Optional[list] = None
    prompt_token_ids: Optional[list] = None
    logprobs: Optional[str] = None

    def __post_init__(self) -> None:
        if self.usage is None:
            self.usage = Usage()


@dataclass
class Completion:
    """What a host's `complete` receives (WIT `completion`, flattened)."""

    status: str  # "completed" | "error"
    final_messages: str
    finish_reason: str
    error_message: Optional[str]
    reward: Optional[float]
    num_tool_calls: int
    tool_latency_ms: float
    extra_fields: Optional[str]


class Host(Protocol):
    """The host calls a RolloutContext makes. In the component it is the WIT
    `host` interface (see `rollout_guest.component`); in tests,
    `rollout_guest.testing.FakeHost`. Errors are raised as the SDK's
    ChatError / CompleteError subclasses."""

    def chat(self, messages: str, params: Optional[str]) -> Any: ...

    def log_event(self, event: str, data: str) -> None: ...

    def debug_log_enabled(self) -> bool: ...

    def complete(self, completion: Completion) -> None: ...


class RolloutContext:
    """The agent's only way out of the sandbox: `chat` with the trainer's
    LLM, `log_event`, and `complete` / `error` to end the rollout."""

    def __init__(self, request: RolloutRequest, host: Host) -> None:
        self.request = request
        self._host = host
        #: Tool calls counted so far (`record_tool_call`, Toolbox.execute).
        self.num_tool_calls = 0
        #: Their summed latency in milliseconds.
        self.tool_latency_ms = 0.0
        #: Sum of `completion_tokens` over this rollout's chat calls so far.
        self.completion_tokens = 0
        #: Chat calls made so far.
        self.num_chat_calls = 0
        self._debug_log_enabled = bool(host.debug_log_enabled())
        # The history so far, for `error()`: the last call's messages and
        # its reply.
        self._last_messages: Sequence[Any] = request.messages
        self._last_reply: Optional[dict] = None

    @property
    def debug_log_enabled(self) -> bool:
        """Whether the server keeps a debug log (`--log`). Check it before
        building expensive events."""
        return self._debug_log_enabled

    def chat(self, messages: Sequence[Any], **params: Any) -> ChatResult:
        """Calls the trainer's LLM with the **full** history (append-only:
        the previous call's messages, its reply, then new messages).

        Keyword arguments are sampling parameters for this call, merged over
        the request's `completion_params` (`ctx.chat(messages,
        temperature=0)`); unknown keys (`tools`, `seed`, ...) are forwarded
        to the trainer. Raises a ChatError subclass when the call fails.
        """
        params_text = None
        if params:
            params_text = jsontext.dumps({**self.request.completion_params, **params})
        history = list(messages)
        reply = self._host.chat(jsontext.dumps(history), params_text)
        try:
            message = json.loads(reply.message)
        except ValueError as e:
            raise BadResponse(f"host sent a malformed message: {e}") from None
        if not isinstance(message, dict):
            raise BadResponse("host sent a message that is not a JSON object")
        u = reply.usage
        usage = Usage(u.prompt_tokens, u.completion_tokens, u.total_tokens)
        self.completion_tokens += usage.completion_tokens
        self.num_chat_calls += 1
        self._last_messages = history
        self._last_reply = message
        return ChatResult(
            message=message,
            finish_reason=reply.finish_reason,
            usage=usage,
            token_ids=reply.token_ids,
            prompt_token_ids=reply.prompt_token_ids,
            logprobs_json=reply.logprobs,
        )

    def log_event(self, event: str, /, **data: Any) -> None:
        """Appends an event to the rollout's debug log; does nothing (and
        encodes nothing) when the server runs without `--log`."""
        if not self._debug_log_enabled:
            return
        try:
            text = jsontext.dumps(data)
        except (TypeError, ValueError):
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
        self._host.log_event(event, text)

    def record_tool_call(self, latency_ms: float = 0.0) -> None:
        """Counts one tool call and its latency in the rollout's metrics.
        `Toolbox.execute` does this for you."""
        self.num_tool_calls += 1
        self.tool_latency_ms += float(latency_ms)

    def complete(
        self,
        messages: Sequence[Any],
        finish_reason: str = "stop",
        reward: Optional[float] = None,
        extra_fields: Optional[dict] = None,
    ) -> None:
        """Ends the rollout successfully: the trainer receives `messages`
        (which must start with the request's), `finish_reason`, `reward`
        and `extra_fields` (a dict). Raises AlreadyCompleted on a second
        call, InvalidCompletion when the host refuses the completion."""
        if extra_fields is not None and not isinstance(extra_fields, dict):
            raise TypeError(f"extra_fields must be a dict, got {type(extra_fields).__name__}")
        self._host.complete(
            Completion(
                status="completed",
                final_messages=jsontext.dumps(list(messages)),
                finish_reason=str(finish_reason),
                error_message=None,
                reward=None if reward is None else float(reward),
                num_tool_calls=self.num_tool_calls,
                tool_latency_ms=self.tool_latency_ms,
                extra_fields=jsontext.dumps(extra_fields) if extra_fields else None,
            )
        )

    def error(self, message: str, final_messages: Optional[Sequence[Any]] = None) -> None:
        """Ends the rollout as failed: the trainer receives status ERROR with
        `message`, and `final_messages` (by default the history so far: the
        last chat call's messages and its reply)."""
        if final_messages is None:
            final_messages = list(self._last_messages)
            if self._last_reply is not None:
                final_messages.append(self._last_reply)
        self._host.complete(
            Completion(
                status="error",
                final_messages=jsontext.dumps(list(final_messages)),
                finish_reason="error",
                error_message=str(message),
                reward=None,
                num_tool_calls=self.num_tool_calls,
                tool_latency_ms=self.tool_latency_ms,
                extra_fields=None,
            )
        )
