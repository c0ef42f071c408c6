import json
import re
import unittest

from rollout_guest import AgentFailure, AgentLoop, Tool, Toolbox, TrainerRejected, describe_exception, export, tool
from rollout_guest.agent import agent_name, get_tools_result, run_rollout
from rollout_guest.testing import FakeHost, reply, run_agent, tool_call, user, wit_request

MESSAGES = [user("What is 5 + 3?")]
THIS_FILE = re.escape(__file__.rsplit("/", 1)[-1])


@tool
def add(a: float, b: float) -> float:
    """Add two numbers"""
    return a + b


TOOLS = Toolbox(add)


class Adder(AgentLoop):
    name = "adder"

    def get_tools(self, request):
        return TOOLS.definitions()

    def run(self, ctx):
        messages = list(ctx.request.messages)
        for _ in range(ctx.request.max_turns):
            r = ctx.chat(messages)
            messages.append(r.message)
            if not r.has_tool_calls:
                return ctx.complete(messages, r.finish_reason, 1.0)
            messages.extend(TOOLS.execute(ctx, r.tool_calls))
        ctx.complete(messages, "max_turns")


def helper_that_fails():
    return 1 / 0


class Failing(AgentLoop):
    def run(self, ctx):
        ctx.chat(ctx.request.messages)
        helper_that_fails()


class ExceptionTextTest(unittest.TestCase):
    def test_run_exception_has_type_message_and_frame(self):
        host = FakeHost(["hi"])
        error = run_agent(Failing(), host, MESSAGES)
        self.assertRegex(
            error, rf"^ZeroDivisionError: division by zero \(at .*{THIS_FILE}:\d+ in helper_that_fails\)$"
        )
        self.assertIsNone(host.completion)

    def test_chat_error_points_at_the_agents_call(self):
        class Rejected(AgentLoop):
            def run(self, ctx):
                ctx.chat(ctx.request.messages)

        error = run_agent(Rejected(), FakeHost([TrainerRejected(400, "bad params")]), MESSAGES)
        self.assertRegex(
            error,
            rf"^TrainerRejected: trainer rejected the request with HTTP 400: bad params "
            rf"\(at .*{THIS_FILE}:\d+ in run\)$",
        )

    def test_message_less_exception_and_no_traceback(self):
        self.assertEqual(describe_exception(KeyError()), "KeyError")
        self.assertEqual(describe_exception(ValueError("x")), "ValueError: x")

    def test_missing_run(self):
        error = run_agent(AgentLoop(), FakeHost(), MESSAGES)
        self.assertTrue(error.startswith("NotImplementedError: AgentLoop does not implement run(ctx)"), error)

    def test_malformed_request(self):
        bad = wit_request(MESSAGES)
        bad.messages = "{"
        self.assertTrue(run_rollout(Adder(), bad, FakeHost()).startswith("ValueError: host sent malformed messages"))
        bad.messages = "{}"
        self.assertTrue(
            run_rollout(Adder(), bad, FakeHost()).startswith("ValueError: host sent messages that is not a JSON array")
        )

    def test_system_exit_is_an_error_too(self):
        class Exits(AgentLoop):
            def run(self, ctx):
                raise SystemExit(3)

        self.assertTrue(run_agent(Exits(), FakeHost(), MESSAGES).startswith("SystemExit: 3 (at "))


class RunTest(unittest.TestCase):
    def test_full_loop(self):
        host = FakeHost([reply(tool_calls=[tool_call("add", {"a": 5, "b": 3}, id="c1")]), "#### 8"])
        self.assertIsNone(run_agent(Adder(), host, MESSAGES))
        final = host.final_messages
        self.assertEqual(final[2], {"role": "tool", "content": "8", "tool_call_id": "c1"})
        c = host.completion
        self.assertEqual((c.status, c.finish_reason, c.reward, c.num_tool_calls), ("completed", "stop", 1.0, 1))

    def test_async_run(self):
        class AsyncLoop(AgentLoop):
            async def run(self, ctx):
                import asyncio

                messages = list(ctx.request.messages)
                r = await ctx.chat(messages)
                await asyncio.sleep(0)  # a bare yield is fine
                messages.append(r.message)
                ctx.complete(messages, r.finish_reason)

        host = FakeHost(["done"])
        self.assertIsNone(run_agent(AsyncLoop(), host, MESSAGES))
        self.assertEqual(host.completion.status, "completed")

    def test_async_run_awaiting_an_event_loop_fails_clearly(self):
        class Pending:  # what an event loop's future yields
            def __await__(self):
                yield self

        class NeedsLoop(AgentLoop):
            async def run(self, ctx):
                await Pending()

        error = run_agent(NeedsLoop(), FakeHost(), MESSAGES)
        self.assertTrue(error.startswith("RuntimeError: run awaited something that needs an event loop (Pending)"), error)


class GetToolsTest(unittest.TestCase):
    def tools_of(self, value):
        class L(AgentLoop):
            def get_tools(self, request):
                return value

        return get_tools_result(L(), wit_request(MESSAGES))

    def test_accepted_shapes(self):
        schema = {"type": "object", "properties": {"q": {"type": "string"}}}
        shapes = [
            TOOLS.definitions(),
            TOOLS,
            [add],
            [{"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                               "parameters": add.parameters}}],
            [{"name": "add", "description": "Add two numbers", "parameters": add.parameters}],
        ]
        for shape in shapes:
            with self.subTest(shape=type(shape).__name__):
                triples, error = self.tools_of(shape)
                self.assertIsNone(error)
                self.assertEqual([(n, d, json.loads(p)) for n, d, p in triples],
                                 [("add", "Add two numbers", add.parameters)])

        class Pydantic:  # e.g. osmosis_ai's OpenAIFunctionToolSchema
            def model_dump(self, exclude_none=False):
                return {"type": "function", "function": {"name": "search", "parameters": schema}}

        triples, error = self.tools_of([Pydantic()])
        self.assertEqual(triples, [("search", "", json.dumps(schema, separators=(",", ":")))])
        triples, _ = self.tools_of([{"name": "bare"}])
        self.assertEqual(json.loads(triples[0][2]), {"type": "object", "properties": {}})

    def test_errors(self):
        for value, starts in [
            (None, "TypeError: get_tools returned None"),
            ([{"function": {"parameters": {}}}], "ValueError: tool 0: no function name"),
            ([{"name": "x", "parameters": []}], "TypeError: tool 'x': parameters must be a JSON schema object"),
            ([42], "TypeError: tool 0: expected a Tool or an OpenAI tool dict, got int"),
        ]:
            with self.subTest(value=value):
                triples, error = self.tools_of(value)
                self.assertIsNone(triples)
                self.assertTrue(error.startswith(starts), error)

        class Raises(AgentLoop):
            def get_tools(self, request):
                raise KeyError("nope")

        _, error = get_tools_result(Raises(), wit_request(MESSAGES))
        self.assertRegex(error, rf"^KeyError: 'nope' \(at .*{THIS_FILE}:\d+ in get_tools\)$")

    def test_request_is_decoded(self):
        seen = {}

        class Peek(AgentLoop):
            def get_tools(self, request):
                seen.update(vars(request))
                return []

        get_tools_result(Peek(), wit_request(MESSAGES, metadata={"ground_truth": "8"}, max_turns=3,
                                             completion_params={"temperature": 0}, tool_server_url="http://t"))
        self.assertEqual(seen["messages"], MESSAGES)
        self.assertEqual(seen["metadata"], {"ground_truth": "8"})
        self.assertEqual(seen["completion_params"], {"temperature": 0})
        self.assertEqual((seen["max_turns"], seen["tool_server_url"]), (3, "http://t"))


class ExportTest(unittest.TestCase):
    def test_export_outside_a_component(self):
        Agent = export(Adder)
        self.assertEqual(Agent.__name__, "Agent")
        self.assertIsInstance(Agent.loop, Adder)
        agent = Agent(host=FakeHost(["#### 8"]))
        self.assertEqual(agent.name(), "adder")
        tools = agent.get_tools(wit_request(MESSAGES))
        self.assertEqual([t.name for t in tools], ["add"])
        self.assertIsNone(agent.run(wit_request(MESSAGES)))

        failing = export(Failing())(host=FakeHost(["x"]))
        with self.assertRaises(AgentFailure) as caught:
            failing.run(wit_request(MESSAGES))
        self.assertTrue(caught.exception.value.startswith("ZeroDivisionError: division by zero (at "))
        with self.assertRaisesRegex(RuntimeError, "not running inside a component"):
            export(Adder)().run(wit_request(MESSAGES))

    def test_names(self):
        class Prop(AgentLoop):
            @property
            def name(self):
                return "from-property"

        class Method:
            def name(self):
                return "from-method"

        class Unnamed(AgentLoop):
            pass

        self.assertEqual(agent_name(Prop()), "from-property")
        self.assertEqual(agent_name(Method()), "from-method")
        self.assertEqual(agent_name(Unnamed()), "Unnamed")


if __name__ == "__main__":
    unittest.main()
