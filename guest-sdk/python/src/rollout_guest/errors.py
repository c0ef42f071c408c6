"""The SDK's exceptions, and how an exception becomes the error text the
host reports to the trainer."""

from __future__ import annotations

import os
import re
import traceback


class RolloutError(Exception):
    """Base of the exceptions raised by the host calls."""


# -- chat -------------------------------------------------------------------


class ChatError(RolloutError):
    """`ctx.chat` failed. One subclass per variant of WIT `chat-error`;
    catch `ChatError` for all of them."""


class Transport(ChatError):
    """The trainer could not be reached (after retries)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"trainer unreachable: {detail}")
        self.detail = detail


class Timeout(ChatError):
    """The trainer did not answer in time (after retries)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"trainer timed out: {detail}")
        self.detail = detail


class TrainerRejected(ChatError):
    """The trainer answered 4xx: the request was rejected, not retried."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"trainer rejected the request with HTTP {status}: {body}")
        self.status = status
        self.body = body


class TrainerFailed(ChatError):
    """The trainer answered 5xx on every attempt."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"trainer failed with HTTP {status}: {body}")
        self.status = status
        self.body = body


class BadResponse(ChatError):
    """The trainer's 2xx answer was not a usable chat completion."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"unusable trainer response: {detail}")
        self.detail = detail


class InvalidRequest(ChatError):
    """The call itself is invalid: malformed JSON, a history that is not
    append-only, a call after `complete`, or a per-rollout limit."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid chat request: {detail}")
        self.detail = detail


ChatError.Transport = Transport
ChatError.Timeout = Timeout
ChatError.TrainerRejected = TrainerRejected
ChatError.TrainerFailed = TrainerFailed
ChatError.BadResponse = BadResponse
ChatError.InvalidRequest = InvalidRequest


# -- complete ---------------------------------------------------------------


class CompleteError(RolloutError):
    """`ctx.complete` / `ctx.error` was refused (WIT `complete-error`)."""


class AlreadyCompleted(CompleteError):
    """`complete` was already called for this rollout; the first stands."""

    def __init__(self) -> None:
        super().__init__("the rollout was already completed")


class InvalidCompletion(CompleteError):
    """The completion is malformed (bad JSON, wrong shape, too large, final
    messages that do not start with the request's)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


CompleteError.AlreadyCompleted = AlreadyCompleted
CompleteError.Invalid = InvalidCompletion


# -- tools ------------------------------------------------------------------


class ToolError(Exception):
    """A tool's failure; the model sees `Error: <message>` as the tool
    result. Raise it from a tool for an expected failure (other exceptions
    are reported as `Error: <Type>: <message>`)."""


# -- exception -> error text ------------------------------------------------


def describe_exception(exc: BaseException) -> str:
    """`Type: message (at file:line in function)`: the exception's type,
    its message and the innermost traceback frame in the agent's own code
    (not this SDK's nor the standard library's, so a ChatError or a
    json.loads error points at the agent's call), as one line for the
    trainer's ERROR callback. Without such a frame, the innermost one."""
    kind = type(exc).__name__
    message = str(exc)
    text = f"{kind}: {message}" if message else kind
    # walk_tb reads the frames only: no source lookup (inside the component
    # there are no source files to read).
    frames = [(f.f_code, lineno) for f, lineno in traceback.walk_tb(exc.__traceback__)]
    own = [fr for fr in frames if not _in_sdk(fr[0].co_filename)]
    agent = [fr for fr in own if not fr[0].co_filename.startswith(_STDLIB_DIR)]
    chosen = (agent or own or frames)[-1:]
    for code, lineno in chosen:
        text += f" (at {_short_path(code.co_filename)}:{lineno} in {code.co_name})"
    return text


_SDK_DIR = os.path.dirname(os.path.abspath(__file__))
_STDLIB_DIR = os.path.dirname(os.__file__) + os.sep


def _in_sdk(filename: str) -> bool:
    return os.path.dirname(filename) == _SDK_DIR


def _short_path(filename: str) -> str:
    # componentize-py mounts each module directory as /0, /1, ... while it
    # builds; the names it keeps start with that mount point.
    return re.sub(r"^/(?:\d+|world|bundled)/", "", filename)
