import json
import unittest
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from rollout_guest import (
    AlreadyCompleted,
    BadResponse,
    ChatError,
    CompleteError,
    InvalidCompletion,
    InvalidRequest,
    RolloutContext,
    RolloutRequest,
    Timeout,
    TrainerFailed,
    TrainerRejected,
    Transport,
)
from rollout_guest.component import WitHost
from rollout_guest.context import RawChatResponse, Usage
from rollout_guest.testing import FakeHost, reply, tool_call, user

MESSAGES = [user("What is 5 + 3?")]


def context(host, **fields):
    fields.setdefault("rollout_id", "r-1")
    fields.setdefault("messages", list(MESSAGES))
    return RolloutContext(RolloutRequest(**fields), host)


class ChatTest(unittest.TestCase):
    def test_result_is_decoded(self):
        calls = [tool_call("add", {"a": 5, "b": 3}, id="c1")]
        host = FakeHost([reply(None, tool_calls=calls, usage=(20, 7, 27), token_ids=[1, 2],
                               prompt_token_ids=[3], logprobs={"content": [{"logprob": -0.5}]})])
        ctx = context(host)
        r = ctx.chat(MESSAGES)
        self.assertEqual(r.message["role"], "assistant")
        self.assertEqual(r.finish_reason, "tool_calls")
        self.assertTrue(r.has_tool_calls)
        self.assertEqual(r.tool_calls, calls)
        self.assertIsNone(r.content)
        self.assertEqual((r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens), (20, 7, 27))
        self.assertEqual(r.usage["total_tokens"], 27)
        self.assertEqual((r.token_ids, r.prompt_token_ids), ([1, 2], [3]))
        self.assertEqual(ctx.completion_tokens, 7)

    def test_logprobs_decoded_lazily_once(self):
        host = FakeHost([reply("hi", logprobs=[{"logprob": -1.0}])])
        r = context(host).chat(MESSAGES)
        self.assertEqual(r.logprobs_json, '[{"logprob": -1.0}]')
        first = r.logprobs
        self.assertEqual(first, [{"logprob": -1.0}])
        self.assertIs(r.logprobs, first)  # cached
        self.assertIsNone(context(FakeHost(["x"])).chat(MESSAGES).logprobs)
        bad = RawChatResponse(message='{"role":"assistant","content":"x"}', logprobs="not json")
        self.assertIsNone(context(FakeHost([bad])).chat(MESSAGES).logprobs)

    def test_plain_answer(self):
        r = context(FakeHost(["The answer is #### 8"])).chat(MESSAGES)
        self.assertEqual(r.content, "The answer is #### 8")
        self.assertFalse(r.has_tool_calls)
        self.assertEqual(r.tool_calls, [])
        self.assertEqual(r.finish_reason, "stop")

    def test_params_none_or_merged_over_completion_params(self):
        host = FakeHost(["a", "b"])
        ctx = context(host, completion_params={"temperature": 1.0, "max_tokens": 100})
        first = ctx.chat(MESSAGES)
        ctx.chat(MESSAGES + [first.message, user("again")], temperature=0.2, seed=7)
        self.assertIsNone(host.chat_calls[0][1])
        self.assertEqual(host.chat_calls[1][1], {"temperature": 0.2, "max_tokens": 100, "seed": 7})

    def test_history_must_be_append_only(self):
        host = FakeHost(["a", "b"])
        ctx = context(host)
        ctx.chat(MESSAGES)
        with self.assertRaises(InvalidRequest):
            ctx.chat(MESSAGES + [user("forgot the reply")])

    def test_malformed_message_is_bad_response(self):
        with self.assertRaisesRegex(BadResponse, "malformed message"):
            context(FakeHost([RawChatResponse(message="{")])).chat(MESSAGES)

    def test_awaitable(self):
        ctx = context(FakeHost(["hi"]))

        async def go():
            return await ctx.chat(MESSAGES)

        coroutine = go()
        with self.assertRaises(StopIteration) as stop:
            coroutine.send(None)
        self.assertEqual(stop.exception.value.content, "hi")


class CompleteTest(unittest.TestCase):
    def test_complete_sends_messages_reward_metrics(self):
        host = FakeHost(request_messages=MESSAGES)
        ctx = context(host)
        ctx.record_tool_call(1.5)
        ctx.record_tool_call(2.0)
        final = MESSAGES + [{"role": "assistant", "content": "#### 8"}]
        ctx.complete(final, finish_reason="stop", reward=1, extra_fields={"k": "v"})
        c = host.completion
        self.assertEqual(c.status, "completed")
        self.assertEqual(json.loads(c.final_messages), final)
        self.assertEqual((c.finish_reason, c.reward, c.error_message), ("stop", 1.0, None))
        self.assertIsInstance(c.reward, float)
        self.assertEqual((c.num_tool_calls, c.tool_latency_ms), (2, 3.5))
        self.assertEqual(json.loads(c.extra_fields), {"k": "v"})

    def test_defaults_and_no_extra_fields(self):
        host = FakeHost()
        context(host).complete(MESSAGES)
        c = host.completion
        self.assertEqual((c.finish_reason, c.reward, c.extra_fields), ("stop", None, None))

    def test_second_complete_is_refused(self):
        host = FakeHost()
        ctx = context(host)
        ctx.complete(MESSAGES)
        with self.assertRaises(AlreadyCompleted):
            ctx.error("late")
        with self.assertRaises(InvalidRequest):
            ctx.chat(MESSAGES)

    def test_invalid_completion(self):
        host = FakeHost(request_messages=MESSAGES)
        with self.assertRaises(InvalidCompletion):
            context(host).complete([user("other")])
        with self.assertRaises(ValueError):  # NaN is not JSON
            context(FakeHost()).complete([{"x": float("nan")}])
        with self.assertRaises(TypeError):
            context(FakeHost()).complete(MESSAGES, extra_fields=["not", "a", "dict"])

    def test_error_defaults_to_the_history_so_far(self):
        host = FakeHost(["thinking"])
        ctx = context(host)
        messages = list(MESSAGES)
        r = ctx.chat(messages)
        messages.append(r.message)  # the caller's list grows; error() must not repeat it
        ctx.error("gave up")
        c = host.completion
        self.assertEqual((c.status, c.finish_reason, c.error_message, c.reward), ("error", "error", "gave up", None))
        self.assertEqual(json.loads(c.final_messages), MESSAGES + [r.message])

    def test_error_with_explicit_messages(self):
        host = FakeHost()
        context(host).error("bad", final_messages=[])
        self.assertEqual(host.final_messages, [])


class LogEventTest(unittest.TestCase):
    def test_events_are_sent_when_enabled(self):
        host = FakeHost(debug_log=True)
        ctx = context(host)
        self.assertTrue(ctx.debug_log_enabled)
        ctx.log_event("pre_llm", turn=0, num_messages=1)
        ctx.log_event("odd", event="ok", value=object())  # `event` is a data key too; odd values as text
        self.assertEqual(host.events[0], ("pre_llm", {"turn": 0, "num_messages": 1}))
        self.assertEqual(host.events[1][1]["event"], "ok")
        self.assertIsInstance(host.events[1][1]["value"], str)

    def test_nothing_is_built_or_sent_when_disabled(self):
        class NoLogHost(FakeHost):
            def log_event(self, event, data):
                raise AssertionError("log_event must not be called")

        ctx = context(NoLogHost(debug_log=False))
        self.assertFalse(ctx.debug_log_enabled)
        ctx.log_event("pre_llm", turn=0)


# -- the WIT host adapter, against stand-ins for componentize-py's bindings --


class Err(Exception):
    def __init__(self, value):
        self.value = value


@dataclass
class HttpError:
    status: int
    body: str


def variant(name, has_value=True):
    if has_value:
        return dataclass(type(name, (), {"__annotations__": {"value": object}}))
    return dataclass(type(name, (), {}))


class FakeTypes:
    ChatRequest = dataclass(type("ChatRequest", (), {"__annotations__": {"messages": str, "params": Optional[str]}}))
    ToolMetrics = dataclass(type("ToolMetrics", (), {"__annotations__": {"num_tool_calls": int, "tool_latency_ms": float}}))
    Completion = dataclass(type("Completion", (), {"__annotations__": {
        "status": object, "final_messages": str, "finish_reason": str, "error_message": Optional[str],
        "reward": Optional[float], "tool_metrics": object, "extra_fields": Optional[str]}}))
    RolloutStatus = Enum("RolloutStatus", {"COMPLETED": 0, "ERROR": 1})


class FakeWitHost:
    def __init__(self, chat_error=None, complete_error=None):
        self.chat_error, self.complete_error = chat_error, complete_error
        self.requests, self.completions = [], []

    def chat(self, request):
        self.requests.append(request)
        if self.chat_error is not None:
            raise Err(self.chat_error)
        return RawChatResponse(message='{"role":"assistant","content":"ok"}', usage=Usage(1, 2, 3))

    def log_event(self, event, data):
        pass

    def debug_log_enabled(self):
        return False

    def complete(self, completion):
        if self.complete_error is not None:
            raise Err(self.complete_error)
        self.completions.append(completion)


class WitHostTest(unittest.TestCase):
    def test_chat_errors_become_exceptions(self):
        cases = [
            (variant("ChatError_Transport")("refused"), Transport, "trainer unreachable: refused"),
            (variant("ChatError_Timeout")("30s"), Timeout, "trainer timed out: 30s"),
            (variant("ChatError_TrainerRejected")(HttpError(400, "bad")), TrainerRejected,
             "trainer rejected the request with HTTP 400: bad"),
            (variant("ChatError_TrainerFailed")(HttpError(503, "down")), TrainerFailed,
             "trainer failed with HTTP 503: down"),
            (variant("ChatError_BadResponse")("no choices"), BadResponse, "unusable trainer response: no choices"),
            (variant("ChatError_InvalidRequest")("not append-only"), InvalidRequest,
             "invalid chat request: not append-only"),
        ]
        for value, kind, message in cases:
            with self.subTest(kind=kind.__name__):
                ctx = context(WitHost(FakeWitHost(chat_error=value), FakeTypes, Err))
                with self.assertRaises(kind) as caught:
                    ctx.chat(MESSAGES)
                self.assertIsInstance(caught.exception, ChatError)
                self.assertEqual(str(caught.exception), message)
        rejected = variant("ChatError_TrainerRejected")(HttpError(422, "no"))
        with self.assertRaises(ChatError.TrainerRejected) as caught:
            context(WitHost(FakeWitHost(chat_error=rejected), FakeTypes, Err)).chat(MESSAGES)
        self.assertEqual((caught.exception.status, caught.exception.body), (422, "no"))

    def test_chat_request_and_response(self):
        wit = FakeWitHost()
        r = context(WitHost(wit, FakeTypes, Err)).chat(MESSAGES, temperature=0)
        self.assertEqual(json.loads(wit.requests[0].messages), MESSAGES)
        self.assertEqual(json.loads(wit.requests[0].params), {"temperature": 0})
        self.assertEqual((r.content, r.usage.total_tokens), ("ok", 3))

    def test_complete_record_and_errors(self):
        wit = FakeWitHost()
        ctx = context(WitHost(wit, FakeTypes, Err))
        ctx.record_tool_call(4.0)
        ctx.complete(MESSAGES, "stop", 1.0)
        c = wit.completions[0]
        self.assertIs(c.status, FakeTypes.RolloutStatus.COMPLETED)
        self.assertEqual((c.tool_metrics.num_tool_calls, c.tool_metrics.tool_latency_ms), (1, 4.0))
        ctx.error("x")
        self.assertIs(wit.completions[1].status, FakeTypes.RolloutStatus.ERROR)

        already = variant("CompleteError_AlreadyCompleted", has_value=False)()
        with self.assertRaises(AlreadyCompleted) as caught:
            context(WitHost(FakeWitHost(complete_error=already), FakeTypes, Err)).complete(MESSAGES)
        self.assertIsInstance(caught.exception, CompleteError)
        invalid = variant("CompleteError_Invalid")("too large")
        with self.assertRaisesRegex(InvalidCompletion, "too large"):
            context(WitHost(FakeWitHost(complete_error=invalid), FakeTypes, Err)).complete(MESSAGES)


if __name__ == "__main__":
    unittest.main()
