import json
import unittest

import calc_agent
from calc_agent import CalculatorAgentLoop, extract_answer, reward
from rollout_guest.testing import FakeHost, reply, run_agent, tool_call, user

QUESTION = [user("What is 5 + 3?")]


def schema():
    # plugins/calc/src/agent.rs, binary_tool
    return {
        "type": "object",
        "properties": {
            "a": {"type": "number", "description": "First number"},
            "b": {"type": "number", "description": "Second number"},
        },
        "required": ["a", "b"],
    }


class ToolsTest(unittest.TestCase):
    def test_same_tools_as_the_rust_calculator(self):
        expected = [
            ("add", "Add two numbers"),
            ("subtract", "Subtract the second number from the first"),
            ("multiply", "Multiply two numbers"),
            ("divide", "Divide the first number by the second"),
        ]
        definitions = CalculatorAgentLoop().get_tools(None)
        self.assertEqual(
            definitions,
            [{"type": "function", "function": {"name": n, "description": d, "parameters": schema()}}
             for n, d in expected],
        )
        self.assertEqual(calc_agent.Agent(host=FakeHost()).name(), "calculator")

    def test_results_and_errors(self):
        cases = [
            ("add", {"a": 5, "b": 3}, "8"),
            ("subtract", {"a": 0.1, "b": 0.3}, "-0.19999999999999998"),
            ("multiply", {"a": 1e10, "b": 1e10}, "1e+20"),
            ("divide", {"a": 1, "b": 3}, "0.3333333333333333"),
            ("divide", {"a": 1, "b": 0}, "Error: division by zero"),
            ("multiply", {"a": 1e200, "b": 1e200}, "Error: result is not a finite number"),
            ("add", {"a": "2.5", "b": "x"}, "Error: 'b' must be a number, got \"x\""),
            ("add", {"b": 1}, "Error: missing required argument 'a'"),
        ]
        calls = [tool_call(n, a, id=f"c{i}") for i, (n, a, _) in enumerate(cases)]
        out = calc_agent.TOOLS.execute(None, calls)
        self.assertEqual([m["content"] for m in out], [c for _, _, c in cases])
        self.assertEqual([m["tool_call_id"] for m in out], [f"c{i}" for i in range(len(cases))])


class LoopTest(unittest.TestCase):
    def test_tool_call_then_answer(self):
        host = FakeHost([reply(tool_calls=[tool_call("add", {"a": 5, "b": 3}, id="call_1")]),
                         reply("The answer is #### 8")])
        self.assertIsNone(run_agent(CalculatorAgentLoop(), host, QUESTION, metadata={"ground_truth": "8"}))
        c = host.completion
        self.assertEqual((c.status, c.finish_reason, c.reward, c.num_tool_calls), ("completed", "stop", 1.0, 1))
        self.assertEqual(host.final_messages[2], {"role": "tool", "content": "8", "tool_call_id": "call_1"})
        self.assertEqual(host.event_names(),
                         ["pre_llm", "llm_response", "tool_results", "pre_llm", "llm_response", "rollout_complete"])
        self.assertEqual(host.events[1][1], {"turn": 0, "has_tool_calls": True, "num_tool_calls": 1,
                                             "finish_reason": "tool_calls", "completion_tokens": 5})
        self.assertEqual(host.events[2][1], {"turn": 0, "num_tool_results": 1, "results": ["8"]})
        self.assertEqual(host.events[-1][1], {"finish_reason": "stop", "reward": 1.0, "num_messages": 4})

    def test_reply_finish_reason_is_kept(self):
        host = FakeHost([reply("#### 7", finish_reason="length")])
        run_agent(CalculatorAgentLoop(), host, QUESTION, metadata={"ground_truth": 8})
        self.assertEqual((host.completion.finish_reason, host.completion.reward), ("length", 0.0))

    def test_max_turns(self):
        calls = [reply(tool_calls=[tool_call("add", {"a": 1, "b": 1})]) for _ in range(2)]
        host = FakeHost(calls)
        run_agent(CalculatorAgentLoop(), host, QUESTION, max_turns=2)
        self.assertEqual((host.completion.finish_reason, host.completion.reward), ("max_turns", None))
        self.assertEqual(len(host.chat_calls), 2)

    def test_max_tokens(self):
        host = FakeHost([reply(tool_calls=[tool_call("add", {"a": 1, "b": 1})], usage=(10, 100, 110))])
        run_agent(CalculatorAgentLoop(), host, QUESTION, max_tokens_total=100)
        self.assertEqual(host.completion.finish_reason, "max_tokens")

    def test_no_events_without_debug_log(self):
        host = FakeHost(["#### 8"], debug_log=False)
        run_agent(CalculatorAgentLoop(), host, QUESTION, metadata={"ground_truth": "8"})
        self.assertEqual(host.events, [])
        self.assertEqual(host.completion.reward, 1.0)


class RewardTest(unittest.TestCase):
    def test_reward_rule(self):
        def r(content, **metadata):
            return reward(QUESTION + [{"role": "assistant", "content": content}], metadata)

        self.assertIsNone(r("#### 8"))
        self.assertEqual(r("#### 8", ground_truth="8"), 1.0)
        self.assertEqual(r("#### 8.00000001", ground_truth=8), 1.0)
        self.assertEqual(r("#### 8.000001", ground_truth=8), 0.0)
        self.assertEqual(r("#### 1,000", ground_truth="1000"), 1.0)
        self.assertEqual(r("#### 3 then #### 8", ground_truth="8"), 1.0)
        self.assertEqual(r("no answer", ground_truth="8"), 0.0)
        self.assertEqual(r("#### 8", ground_truth=True), 0.0)
        self.assertEqual(r("#### 8", ground_truth=None), 0.0)
        self.assertEqual(r("#### 8", ground_truth="1_0"), 0.0)
        self.assertEqual(r(None, ground_truth="8"), 0.0)
        # The last assistant message counts, even without text.
        messages = QUESTION + [{"role": "assistant", "content": "#### 8"},
                               {"role": "assistant", "content": None, "tool_calls": []}]
        self.assertEqual(reward(messages, {"ground_truth": "8"}), 0.0)

    def test_extract_answer(self):
        self.assertEqual(extract_answer("#### -2.5e1 apples"), -25.0)
        self.assertEqual(extract_answer("####\u00a08"), 8.0)  # Rust trims Unicode spaces
        self.assertIsNone(extract_answer("####\u001c8"))  # ... but not these
        self.assertIsNone(extract_answer("8"))


if __name__ == "__main__":
    unittest.main()
