import enum
import unittest
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from rollout_guest import Tool, Toolbox, parse_docstring, tool


class SchemaTest(unittest.TestCase):
    def test_calculator_schema_matches_the_rust_plugin(self):
        @tool
        def add(a: float, b: float) -> float:
            """Add two numbers

            Args:
                a: First number
                b: Second number
            """
            return a + b

        self.assertEqual(
            add.definition(),
            {
                "type": "function",
                "function": {
                    "name": "add",
                    "description": "Add two numbers",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "a": {"type": "number", "description": "First number"},
                            "b": {"type": "number", "description": "Second number"},
                        },
                        "required": ["a", "b"],
                    },
                },
            },
        )
        self.assertEqual(add(2, 3), 5)  # still callable as the function

    def test_basic_types_and_required(self):
        @tool
        def f(i: int, x: float, s: str, flag: bool, items: list, mapping: dict, n: int = 3):
            pass

        props = f.parameters["properties"]
        self.assertEqual(props["i"], {"type": "integer"})
        self.assertEqual(props["x"], {"type": "number"})
        self.assertEqual(props["s"], {"type": "string"})
        self.assertEqual(props["flag"], {"type": "boolean"})
        self.assertEqual(props["items"], {"type": "array"})
        self.assertEqual(props["mapping"], {"type": "object"})
        self.assertEqual(props["n"], {"type": "integer", "default": 3})
        self.assertEqual(f.parameters["required"], ["i", "x", "s", "flag", "items", "mapping"])
        self.assertEqual(f.description, "")

    def test_generic_optional_literal_enum_annotated(self):
        class Color(enum.Enum):
            RED = "red"
            BLUE = "blue"

        @tool
        def f(
            xs: List[int],
            ys: list[str],
            d: Dict[str, float],
            o: Optional[str] = None,
            u: int | None = None,
            mode: Literal["fast", "slow"] = "fast",
            c: Color = Color.RED,
            an: Annotated[int, "How many"] = 1,
            either: Union[int, str] = 0,
            anything: Any = None,
        ):
            pass

        p = f.parameters["properties"]
        self.assertEqual(p["xs"], {"type": "array", "items": {"type": "integer"}})
        self.assertEqual(p["ys"], {"type": "array", "items": {"type": "string"}})
        self.assertEqual(p["d"], {"type": "object", "additionalProperties": {"type": "number"}})
        self.assertEqual(p["o"], {"type": "string"})
        self.assertEqual(p["u"], {"type": "integer"})
        self.assertEqual(p["mode"], {"type": "string", "enum": ["fast", "slow"], "default": "fast"})
        self.assertEqual(p["c"], {"type": "string", "enum": ["red", "blue"], "default": "red"})
        self.assertEqual(p["an"], {"type": "integer", "description": "How many", "default": 1})
        self.assertEqual(p["either"], {"anyOf": [{"type": "integer"}, {"type": "string"}], "default": 0})
        self.assertEqual(p["anything"], {})
        self.assertEqual(f.parameters["required"], ["xs", "ys", "d"])

    def test_no_parameters_has_no_required(self):
        @tool
        def now() -> str:
            """The time."""
            return "noon"

        self.assertEqual(now.parameters, {"type": "object", "properties": {}})

    def test_unsupported_type_fails_at_decoration(self):
        class Point:
            pass

        with self.assertRaisesRegex(TypeError, "tool 'f', parameter 'p'"):

            @tool
            def f(p: Point):
                pass

    def test_name_and_description_override(self):
        @tool(name="sum2", description="Adds")
        def add(a: float, b: float):
            """Ignored"""

        self.assertEqual((add.name, add.description), ("sum2", "Adds"))

    def test_method_tool_binds_self(self):
        class Counter:
            def __init__(self):
                self.base = 10

            @tool
            def plus(self, x: int) -> int:
                """Adds to the base."""
                return self.base + x

        c = Counter()
        self.assertEqual(list(c.plus.parameters["properties"]), ["x"])
        self.assertEqual(Toolbox(c.plus).call("plus", '{"x": 5}'), 15)

    def test_raw_tool(self):
        t = Tool.raw("echo", "Echo", {"type": "object"}, lambda args: args)
        self.assertEqual(t.invoke({"q": 1}), {"q": 1})


class DocstringTest(unittest.TestCase):
    def test_google(self):
        doc = """Search the web
        for pages.

        Longer text that is not the description.

        Args:
            query (str): What to look for,
                over two lines.
            limit: How many
        Returns:
            The pages.
        """
        self.assertEqual(
            parse_docstring(doc),
            ("Search the web for pages.", {"query": "What to look for, over two lines.", "limit": "How many"}),
        )

    def test_numpy(self):
        doc = """Search.

        Parameters
        ----------
        query : str
            What to look for.
        limit : int, optional
            How many.

        Returns
        -------
        list
        """
        self.assertEqual(parse_docstring(doc), ("Search.", {"query": "What to look for.", "limit": "How many."}))

    def test_sphinx(self):
        doc = """Search.

        :param query: What to look for.
        :param int limit: How many.
        :returns: pages
        """
        self.assertEqual(parse_docstring(doc), ("Search.", {"query": "What to look for.", "limit": "How many."}))

    def test_description_stops_at_a_section(self):
        self.assertEqual(parse_docstring("Adds.\nArgs:\n    a: x"), ("Adds.", {"a": "x"}))
        self.assertEqual(parse_docstring(None), ("", {}))


if __name__ == "__main__":
    unittest.main()
