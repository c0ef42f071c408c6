import unittest
from typing import List, Literal, Optional

from rollout_guest import ToolError, Toolbox, format_tool_value, number_arg, tool
from rollout_guest.jsontext import format_float, json_text


class FakeCtx:
    def __init__(self):
        self.latencies = []

    def record_tool_call(self, latency_ms):
        self.latencies.append(latency_ms)


@tool
def add(a: float, b: float) -> float:
    """Add two numbers

    Args:
        a: First number
        b: Second number
    """
    return a + b


@tool
def divide(a: float, b: float) -> float:
    """Divide the first number by the second"""
    if b == 0:
        raise ToolError("division by zero")
    return a / b


@tool
def crash(x: int) -> int:
    """Fails."""
    return {}["missing"]


@tool
def pick(mode: Literal["a", "b"], n: int = 1, tags: Optional[List[str]] = None, flag: bool = False) -> dict:
    """Echoes its arguments."""
    return {"mode": mode, "n": n, "tags": tags, "flag": flag}


TOOLS = Toolbox(add, divide, crash, pick)


def call(name, arguments, id="call_1"):
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def run(name, arguments):
    return TOOLS.execute(None, [call(name, arguments)])[0]["content"]


class DispatcherTest(unittest.TestCase):
    def test_results_are_tool_messages_with_ids_and_metrics(self):
        ctx = FakeCtx()
        out = TOOLS.execute(ctx, [call("add", '{"a": 5, "b": 3}', "c1"), call("divide", '{"a": 1, "b": 4}', "c2")])
        self.assertEqual(
            out,
            [
                {"role": "tool", "content": "8", "tool_call_id": "c1"},
                {"role": "tool", "content": "0.25", "tool_call_id": "c2"},
            ],
        )
        self.assertEqual(len(ctx.latencies), 2)
        self.assertTrue(all(ms >= 0 for ms in ctx.latencies))

    def test_errors_match_the_rust_toolbox(self):
        cases = [
            ("add", "not json", "Error: arguments are not valid JSON: "),
            ("add", '{"a": NaN, "b": 1}', "Error: arguments are not valid JSON: NaN is not valid JSON"),
            ("add", '{"a": 1e400, "b": 1}', "Error: arguments are not valid JSON: number out of range"),
            ("add", "[1, 2]", "Error: arguments must be a JSON object"),
            ("add", 5, "Error: arguments must be a JSON object"),
            ("add", '{"b": 1}', "Error: missing required argument 'a'"),
            ("add", "", "Error: missing required argument 'a'"),
            ("add", None, "Error: missing required argument 'a'"),
            ("add", '{"a": "x", "b": 1}', "Error: 'a' must be a number, got \"x\""),
            ("add", '{"a": "1_000", "b": 1}', "Error: 'a' must be a number, got \"1_000\""),
            ("add", '{"a": "inf", "b": 1}', "Error: 'a' must be a number, got \"inf\""),
            ("add", '{"a": true, "b": 1}', "Error: 'a' must be a number, got true"),
            ("add", '{"a": null, "b": 1}', "Error: 'a' must be a number, got null"),
            ("add", '{"a": [1, 2], "b": 1}', "Error: 'a' must be a number, got [1,2]"),
            ("add", '{"a": {"x": 1}, "b": 1}', "Error: 'a' must be a number, got {\"x\":1}"),
            ("sqrt", '{"a": 1}', "Error: unknown tool 'sqrt'"),
            ("divide", '{"a": 1, "b": 0}', "Error: division by zero"),
            ("crash", '{"x": 1}', "Error: KeyError: 'missing'"),
            ("crash", '{"x": 1.5}', "Error: 'x' must be an integer, got 1.5"),
            ("pick", '{"mode": "c"}', "Error: 'mode' must be one of \"a\", \"b\", got \"c\""),
            ("pick", '{"mode": "a", "tags": ["x", 2]}', "Error: 'tags[1]' must be a string, got 2"),
            ("pick", '{"mode": "a", "flag": "yes"}', "Error: 'flag' must be a boolean, got \"yes\""),
        ]
        for name, arguments, expected in cases:
            with self.subTest(name=name, arguments=arguments):
                content = run(name, arguments)
                if expected.endswith(": "):
                    self.assertTrue(content.startswith(expected), content)
                else:
                    self.assertEqual(content, expected)

    def test_no_function_name(self):
        out = TOOLS.execute(None, [{"id": "c9", "function": {"arguments": "{}"}}])
        self.assertEqual(out, [{"role": "tool", "content": "Error: tool call has no function name", "tool_call_id": "c9"}])

    def test_arguments_are_converted(self):
        self.assertEqual(run("add", '{"a": " 7 ", "b": 1}'), "8")
        self.assertEqual(run("add", {"a": 1, "b": 2}), "3")  # an object, not a string
        self.assertEqual(run("add", '{"a": 2, "b": 3, "extra": 4}'), "5")  # extras ignored
        self.assertEqual(run("crash", '{"x": 2.0}'), "Error: KeyError: 'missing'")  # 2.0 -> 2
        self.assertEqual(run("pick", '{"mode": "b", "n": 2}'), '{"mode":"b","n":2,"tags":null,"flag":false}')

    def test_number_arg(self):
        self.assertEqual(number_arg({"a": "2.5"}, "a"), 2.5)
        with self.assertRaisesRegex(ToolError, "missing required argument 'b'"):
            number_arg({}, "b")

    def test_toolbox_construction(self):
        box = Toolbox([add], divide)
        self.assertEqual(box.names, ["add", "divide"])
        self.assertIn("add", box)
        with self.assertRaisesRegex(ValueError, "duplicate"):
            box.add(add)
        box.tool("raw", "Raw", {"type": "object"}, lambda args: args.get("q"))
        self.assertEqual(box.execute(None, [call("raw", '{"q": "hi"}')])[0]["content"], "hi")

        @box.add
        def shout(text: str) -> str:
            """Upper-cases."""
            return text.upper()

        self.assertEqual(shout("a"), "A")
        self.assertEqual(box.execute(None, [call("shout", '{"text": "a"}')])[0]["content"], "A")


class FormatTest(unittest.TestCase):
    def test_format_tool_value_like_rust(self):
        cases = [
            (8.0, "8"),
            (8, "8"),
            (-0.0, "0"),
            (2.5, "2.5"),
            (1 / 3, "0.3333333333333333"),
            (1e20, "1e+20"),
            (1e15, "1000000000000000.0"),
            (1e-7, "1e-7"),
            ("text", "text"),
            (True, "true"),
            (None, "null"),
            ([1, 2.0, "x"], '[1,2.0,"x"]'),
            ({"a": {"b": [1.5, None]}}, '{"a":{"b":[1.5,null]}}'),
            (float("nan"), "null"),
        ]
        for value, expected in cases:
            with self.subTest(value=value):
                self.assertEqual(format_tool_value(value), expected)

    def test_floats_as_serde_json_writes_them(self):
        # Captured from rollout-host (serde_json 1.0.154) re-encoding these values.
        values = [1e-5, 1e-6, 1e20, 1.5e-7, 1e16, 1e15, 9999999999999998.0, 123456789.123,
                  0.1 + 0.2, -2.5e-300, 5e-324, 1.7976931348623157e308, 1234.5e-10, 0.001234,
                  12345678901234567890.0, 1e21, 2.5, 8.0, -0.0, 0.0, 100.0, 1e-4, 3e-5, 1.25e16]
        serde = ("0.00001,1e-6,1e+20,1.5e-7,1e+16,1000000000000000.0,9999999999999998.0,"
                 "123456789.123,0.30000000000000004,-2.5e-300,5e-324,1.7976931348623157e+308,"
                 "1.2345e-7,0.001234,1.2345678901234567e+19,1e+21,2.5,8.0,-0.0,0.0,100.0,0.0001,"
                 "0.00003,1.25e+16")
        self.assertEqual(",".join(format_float(v) for v in values), serde)
        self.assertEqual(json_text(values), "[" + serde + "]")


if __name__ == "__main__":
    unittest.main()
