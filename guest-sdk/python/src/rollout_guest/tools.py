"""Tools: `@tool` builds an OpenAI function tool (JSON schema from the
signature, type hints and docstring) around a plain function; a `Toolbox`
runs a reply's tool calls and turns each into a `role: tool` message, with
failures as `"Error: ..."` content so the rollout goes on (as the Rust
SDK's Toolbox does)."""

from __future__ import annotations

import collections.abc
import enum
import inspect
import json
import math
import re
import time
import types
import typing
from typing import Any, Callable, Iterable, Optional

from . import jsontext
from .errors import ToolError

__all__ = [
    "Tool",
    "Toolbox",
    "ToolError",
    "tool",
    "number_arg",
    "parse_docstring",
    "format_tool_value",
]

format_tool_value = jsontext.format_tool_value

Converter = Callable[[Any, str], Any]


# -- argument checks --------------------------------------------------------


def _shown(value: Any) -> str:
    """A received value in an error message: a string quoted as it is,
    anything else as JSON (as the Rust SDK's messages show them)."""
    if isinstance(value, str):
        return f'"{value}"'
    return jsontext.json_text(value)


def _parse_float(text: str) -> Optional[float]:
    text = text.strip()
    # Rust's f64 parser: ASCII only, no `_` separators.
    if not text.isascii() or "_" in text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _to_float(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ToolError(f"'{name}' must be a number, got {_shown(value)}")
    if isinstance(value, (int, float)):
        f = float(value)
        if not math.isfinite(f):
            raise ToolError(f"'{name}' is not a finite number")
        return f
    if isinstance(value, str):
        parsed = _parse_float(value)
        if parsed is None:
            raise ToolError(f"'{name}' must be a number, got {_shown(value)}")
        return parsed
    raise ToolError(f"'{name}' must be a number, got {_shown(value)}")


def _to_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ToolError(f"'{name}' must be an integer, got {_shown(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        return int(value)
    raise ToolError(f"'{name}' must be an integer, got {_shown(value)}")


def _to_str(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    raise ToolError(f"'{name}' must be a string, got {_shown(value)}")


def _to_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ToolError(f"'{name}' must be a boolean, got {_shown(value)}")


def _any(value: Any, name: str) -> Any:
    return value


def number_arg(args: dict, name: str) -> float:
    """Reads a numeric argument (a JSON number, or a string holding one),
    as the Rust SDK's `number_arg`: raises ToolError otherwise."""
    if name not in args:
        raise ToolError(f"missing required argument '{name}'")
    return _to_float(args[name], name)


# -- type hints -> JSON schema + converter ------------------------------------

_NONE_TYPE = type(None)
_SEQUENCES = (
    list, tuple, set, frozenset,
    collections.abc.Sequence, collections.abc.MutableSequence,
    collections.abc.Iterable, collections.abc.Collection,
)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _json_type(values: Iterable[Any]) -> Optional[str]:
    kinds = set()
    for v in values:
        if isinstance(v, bool):
            kinds.add("boolean")
        elif isinstance(v, int):
            kinds.add("integer")
        elif isinstance(v, float):
            kinds.add("number")
        elif isinstance(v, str):
            kinds.add("string")
        elif v is None:
            kinds.add("null")
        else:
            return None
    if kinds == {"integer", "number"}:
        return "number"
    return kinds.pop() if len(kinds) == 1 else None


def _choice_converter(choices: list, to_value: Callable[[Any], Any]) -> Converter:
    def convert(value: Any, name: str) -> Any:
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return to_value(choice)
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and isinstance(choice, (int, float))
                and not isinstance(choice, bool)
                and value == choice
            ):
                return to_value(choice)
        shown = ", ".join(jsontext.json_text(c) for c in choices)
        raise ToolError(f"'{name}' must be one of {shown}, got {_shown(value)}")

    return convert


def schema_for(hint: Any) -> tuple[dict, Converter]:
    """The JSON schema of a type hint and the function that checks (and
    converts) a received value against it. Raises TypeError for a hint with
    no JSON equivalent."""
    if hint is inspect.Parameter.empty or hint is Any or hint is object:
        return {}, _any
    if hint is _NONE_TYPE or hint is None:
        def convert_none(value: Any, name: str) -> Any:
            if value is None:
                return None
            raise ToolError(f"'{name}' must be null, got {_shown(value)}")

        return {"type": "null"}, convert_none

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    if origin is typing.Annotated:
        schema, convert = schema_for(args[0])
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            schema = {**schema, "description": notes[0]}
        return schema, convert

    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in args if a is not _NONE_TYPE]
        nullable = len(members) < len(args)
        if len(members) == 1:
            schema, inner = schema_for(members[0])
        else:
            built = [schema_for(m) for m in members]
            schema = {"anyOf": [s for s, _ in built]}
            converters = [c for _, c in built]

            def inner(value: Any, name: str) -> Any:
                errors = []
                for c in converters:
                    try:
                        return c(value, name)
                    except ToolError as e:
                        errors.append(str(e))
                raise ToolError("; or ".join(errors))

        if not nullable:
            return schema, inner

        def convert_optional(value: Any, name: str) -> Any:
            return None if value is None else inner(value, name)

        return schema, convert_optional

    if origin is typing.Literal:
        choices = list(args)
        schema: dict = {}
        kind = _json_type(choices)
        if kind:
            schema["type"] = kind
        schema["enum"] = choices
        return schema, _choice_converter(choices, lambda c: c)

    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        members = list(hint)
        values = [m.value for m in members]
        schema = {}
        kind = _json_type(values)
        if kind:
            schema["type"] = kind
        schema["enum"] = values
        return schema, _choice_converter(values, hint)

    if hint is bool:
        return {"type": "boolean"}, _to_bool
    if hint is int:
        return {"type": "integer"}, _to_int
    if hint is float:
        return {"type": "number"}, _to_float
    if hint is str:
        return {"type": "string"}, _to_str

    container = origin or hint
    if container in _SEQUENCES:
        item_hint: Any = args[0] if args else Any
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            # A fixed-length tuple: one item schema only when all agree.
            item_hint = args[0] if len(set(args)) == 1 else Any
        item_schema, item_convert = schema_for(item_hint)
        schema = {"type": "array"}
        if item_schema:
            schema["items"] = item_schema
        make: Callable[[Any], Any] = (
            tuple if container is tuple else set if container in (set, frozenset) else list
        )

        def convert_list(value: Any, name: str) -> Any:
            if not isinstance(value, list):
                raise ToolError(f"'{name}' must be an array, got {_shown(value)}")
            return make(item_convert(v, f"{name}[{i}]") for i, v in enumerate(value))

        return schema, convert_list

    if container in _MAPPINGS:
        value_hint = args[1] if len(args) == 2 else Any
        value_schema, value_convert = schema_for(value_hint)
        schema = {"type": "object"}
        if value_schema:
            schema["additionalProperties"] = value_schema

        def convert_dict(value: Any, name: str) -> Any:
            if not isinstance(value, dict):
                raise ToolError(f"'{name}' must be an object, got {_shown(value)}")
            return {k: value_convert(v, f"{name}.{k}") for k, v in value.items()}

        return schema, convert_dict

    raise TypeError(f"no JSON schema for the type {hint!r}")


# -- docstrings ---------------------------------------------------------------

_GOOGLE_PARAMS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
_GOOGLE_OTHER = {
    "returns", "return", "yields", "raises", "examples", "example", "notes", "note",
    "see also", "warnings", "warning", "attributes", "todo", "references",
}
_NUMPY_SECTIONS = {"parameters", "other parameters", "returns", "yields", "raises",
                   "see also", "notes", "examples", "references", "warnings", "attributes"}


def parse_docstring(doc: Optional[str]) -> tuple[str, dict[str, str]]:
    """The description (the first paragraph, its lines joined) and the
    parameter descriptions of a Google (`Args:`), NumPy (`Parameters` /
    `----------`) or Sphinx (`:param a: ...`) style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    description_lines: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or _is_section(lines, line):
            break
        if stripped.startswith(":"):
            break
        description_lines.append(stripped)
    description = " ".join(description_lines)

    params: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        header = stripped.rstrip(":").lower()
        # Sphinx: `:param a: text` / `:param float a: text`
        m = re.match(r":param\s+(?:[^:]*\s)?\*{0,2}(\w+)\s*:\s*(.*)", stripped)
        if m:
            text = [m.group(2).strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(":"):
                text.append(lines[i].strip())
                i += 1
            params[m.group(1)] = " ".join(t for t in text if t)
            continue
        # NumPy: `Parameters` then a dashes line.
        if (
            header in _NUMPY_SECTIONS
            and i + 1 < len(lines)
            and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1])
        ):
            base = _indent(line)
            i += 2
            if header not in ("parameters", "other parameters"):
                continue
            current: Optional[str] = None
            while i < len(lines):
                entry = lines[i]
                if entry.strip() and _indent(entry) <= base:
                    if i + 1 < len(lines) and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1]):
                        break
                    name = entry.split(":", 1)[0].strip().lstrip("*")
                    name = name.split(",")[0].strip()
                    current = name
                    params[current] = ""
                elif entry.strip() and current is not None:
                    params[current] = (params[current] + " " + entry.strip()).strip()
                i += 1
            continue
        # Google: `Args:` then indented `name (type): text` entries.
        if stripped.endswith(":") and header in _GOOGLE_PARAMS:
            base = _indent(line)
            i += 1
            entry_indent: Optional[int] = None
            current = None
            while i < len(lines):
                entry = lines[i]
                if not entry.strip():
                    i += 1
                    continue
                indent = _indent(entry)
                if indent <= base:
                    break
                if entry_indent is None:
                    entry_indent = indent
                if indent == entry_indent:
                    m = re.match(r"\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", entry)
                    if m:
                        current = m.group(1)
                        params[current] = m.group(2).strip()
                elif current is not None:
                    params[current] = (params[current] + " " + entry.strip()).strip()
                i += 1
            continue
        i += 1
    return description, params


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_section(lines: list[str], line: str) -> bool:
    stripped = line.strip()
    header = stripped.rstrip(":").lower()
    if stripped.endswith(":") and (header in _GOOGLE_PARAMS or header in _GOOGLE_OTHER):
        return True
    if header in _NUMPY_SECTIONS:
        idx = lines.index(line)
        return idx + 1 < len(lines) and bool(re.fullmatch(r"\s*-{3,}\s*", lines[idx + 1]))
    return False


# -- tools --------------------------------------------------------------------


class Tool:
    """An OpenAI function tool: name, description, JSON schema of its
    arguments, and the handler that runs it. Made by `@tool` (from a
    function) or `Tool.raw` (a handler taking the arguments dict). A Tool
    made by `@tool` can still be called like the function."""

    def __init__(
        self,
        name: str,
        description: str,
        parameters: dict,
        handler: Callable[[dict], Any],
        function: Optional[Callable[..., Any]] = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a tool needs a non-empty name")
        if not isinstance(parameters, dict):
            raise TypeError(f"tool '{name}': parameters must be a JSON schema object (dict)")
        self.name = name
        self.description = description
        self.parameters = parameters
        self._handler = handler
        self.function = function
        if function is not None:
            self.__doc__ = function.__doc__
            self.__wrapped__ = function

    @classmethod
    def raw(
        cls, name: str, description: str, parameters: dict, handler: Callable[[dict], Any]
    ) -> "Tool":
        """A tool with an explicit schema; `handler(args)` receives the
        arguments dict unchecked (as the Rust Toolbox's handlers do)."""
        return cls(name, description, parameters, handler)

    def invoke(self, args: dict) -> Any:
        """Runs the tool on a decoded arguments dict (checked against the
        signature for `@tool` tools). Raises ToolError for bad arguments."""
        return self._handler(args)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.function is None:
            raise TypeError(f"tool '{self.name}' wraps no function; use invoke(args)")
        return self.function(*args, **kwargs)

    def __get__(self, obj: Any, objtype: Any = None) -> "Tool":
        # `@tool` on a method: `self.add` is the tool bound to the instance.
        if obj is None or self.function is None or not getattr(self, "_is_method", False):
            return self
        bound = self.function.__get__(obj, objtype)
        return _tool_from_function(bound, self.name, self.description, skip_self=False)

    def definition(self) -> dict:
        """The OpenAI tool dict: `{"type": "function", "function": {...}}`."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def _tool_from_function(
    fn: Callable[..., Any],
    name: Optional[str],
    description: Optional[str],
    skip_self: bool,
) -> Tool:
    tool_name = name or fn.__name__
    doc_description, doc_params = parse_docstring(inspect.getdoc(fn))
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as e:  # unresolvable forward references
        raise TypeError(f"tool '{tool_name}': cannot read its type hints: {e}") from None
    signature = inspect.signature(fn)
    parameters = list(signature.parameters.values())
    is_method = bool(skip_self and parameters and parameters[0].name in ("self", "cls"))
    if is_method:
        parameters = parameters[1:]

    properties: dict[str, dict] = {}
    required: list[str] = []
    converters: dict[str, Converter] = {}
    accepts_extra = False
    for p in parameters:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_extra = True
            continue
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"tool '{tool_name}': positional-only parameter '{p.name}'")
        hint = hints.get(p.name, inspect.Parameter.empty)
        try:
            schema, convert = schema_for(hint)
        except TypeError as e:
            raise TypeError(f"tool '{tool_name}', parameter '{p.name}': {e}") from None
        schema = dict(schema)
        if p.name in doc_params and doc_params[p.name]:
            schema["description"] = doc_params[p.name]
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        elif p.default is not None:
            default = p.default.value if isinstance(p.default, enum.Enum) else p.default
            try:
                json.dumps(default, allow_nan=False)
                schema["default"] = default
            except (TypeError, ValueError):
                pass
        properties[p.name] = schema
        converters[p.name] = convert

    parameters_schema: dict = {"type": "object", "properties": properties}
    if required:
        parameters_schema["required"] = required

    def handler(args: dict) -> Any:
        kwargs: dict[str, Any] = {}
        for pname in required:
            if pname not in args:
                raise ToolError(f"missing required argument '{pname}'")
        for key, value in args.items():
            convert = converters.get(key)
            if convert is not None:
                kwargs[key] = convert(value, key)
            elif accepts_extra:
                kwargs[key] = value
        return fn(**kwargs)

    tool_obj = Tool(
        tool_name,
        description if description is not None else doc_description,
        parameters_schema,
        handler,
        function=fn,
    )
    tool_obj._is_method = is_method  # type: ignore[attr-defined]
    return tool_obj


def tool(
    fn: Optional[Callable[..., Any]] = None,
    *,
    name: Optional[str] = None,
    description: Optional[str] = None,
) -> Any:
    """Makes a function an OpenAI function tool.

    The schema comes from the signature: each parameter's type hint (int,
    float, str, bool, list[...], dict[...], Optional[...], Literal[...],
    Enum, Annotated[T, "description"]), required when it has no default.
    The description is the docstring's first paragraph; parameter
    descriptions come from its `Args:` (Google), `Parameters` (NumPy) or
    `:param x:` (Sphinx) entries. Arguments are checked and converted
    before the call (a float parameter accepts an int or a numeric string,
    as the Rust SDK's `number_arg`); extra arguments are ignored unless the
    function takes `**kwargs`.

        @tool
        def add(a: float, b: float) -> float:
            '''Add two numbers

            Args:
                a: First number
                b: Second number
            '''
            return a + b

    Also `@tool(name="...", description="...")`.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return _tool_from_function(f, name, description, skip_self=True)

    return wrap(fn) if fn is not None else wrap


def _as_tool(item: Any) -> Tool:
    if isinstance(item, Tool):
        return item
    if callable(item):
        return tool(item)
    raise TypeError(f"not a tool: {item!r} (use @tool on a function, or Tool.raw)")


class Toolbox:
    """The agent's tools, each declared once, and their dispatcher.

        tools = Toolbox(add, subtract)           # @tool functions (or plain ones)
        ...get_tools: return tools.definitions()
        ...run:       messages.extend(tools.execute(ctx, reply.tool_calls))
    """

    def __init__(self, *tools: Any) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            if isinstance(item, (list, tuple, Toolbox)):
                for t in item:
                    self.add(t)
            else:
                self.add(item)

    def add(self, item: Any) -> Any:
        """Adds a tool (a Tool, or a function, wrapped with `@tool`). Returns
        its argument, so it also works as a decorator: `@toolbox.add`."""
        t = _as_tool(item)
        if t.name in self._tools:
            raise ValueError(f"duplicate tool name '{t.name}'")
        self._tools[t.name] = t
        return item

    def tool(
        self, name: str, description: str, parameters: dict, handler: Callable[[dict], Any]
    ) -> "Toolbox":
        """Adds a tool with an explicit JSON schema; `handler(args)` gets the
        arguments dict (as the Rust Toolbox's `tool`). Returns the toolbox."""
        self.add(Tool.raw(name, description, parameters, handler))
        return self

    def __iter__(self):
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def get(self, name: str) -> Optional[Tool]:
        return self._tools.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def definitions(self) -> list[dict]:
        """The OpenAI tool dicts, for `get_tools`."""
        return [t.definition() for t in self._tools.values()]

    def call(self, name: str, arguments: Any) -> Any:
        """Runs one tool by name. `arguments` is the tool call's `arguments`:
        a JSON string (as OpenAI sends it), a dict, or None. Raises
        ToolError for an unknown tool or bad arguments; the tool's own
        exceptions propagate."""
        t = self._tools.get(name)
        if t is None:
            raise ToolError(f"unknown tool '{name}'")
        if isinstance(arguments, dict):
            args = arguments
        elif arguments is None:
            args = {}
        elif isinstance(arguments, str):
            if not arguments.strip():
                args = {}
            else:
                try:
                    args = jsontext.loads_strict(arguments)
                except ValueError as e:
                    raise ToolError(f"arguments are not valid JSON: {e}") from None
                if not isinstance(args, dict):
                    raise ToolError("arguments must be a JSON object")
        else:
            raise ToolError("arguments must be a JSON object")
        return t.invoke(args)

    def execute_one(self, ctx: Any, call: Any) -> dict:
        """Runs one tool call (an OpenAI `tool_calls` item) and returns its
        `role: tool` message; see `execute`."""
        start = time.perf_counter()
        call_id = ""
        try:
            if not isinstance(call, dict):
                raise ToolError("tool call is not a JSON object")
            cid = call.get("id")
            call_id = cid if isinstance(cid, str) else ""
            function = call.get("function")
            fname = function.get("name") if isinstance(function, dict) else None
            if not isinstance(fname, str):
                raise ToolError("tool call has no function name")
            value = self.call(fname, function.get("arguments"))
            content = format_tool_value(value)
        except ToolError as e:
            content = f"Error: {e}"
        except Exception as e:  # the tool's own failure
            message = str(e)
            content = f"Error: {type(e).__name__}: {message}" if message else f"Error: {type(e).__name__}"
        if ctx is not None:
            ctx.record_tool_call((time.perf_counter() - start) * 1000.0)
        return {"role": "tool", "content": content, "tool_call_id": call_id}

    def execute(self, ctx: Any, tool_calls: Any) -> list[dict]:
        """Executes the tool calls of an assistant message in order and
        returns one `role: tool` message per call (`tool_call_id` set).
        Failures (unknown tool, bad JSON, missing or mistyped arguments, an
        exception in the tool) become `"Error: ..."` content, so the rollout
        goes on and the model sees the error. Each call is counted in the
        context's tool metrics (`ctx` may be None). `tool_calls` may also be
        the ChatResult itself."""
        if hasattr(tool_calls, "tool_calls") and not isinstance(tool_calls, (list, tuple)):
            tool_calls = tool_calls.tool_calls
        return [self.execute_one(ctx, call) for call in tool_calls or []]


def tool_definitions(items: Any) -> list[tuple[str, str, dict]]:
    """Normalizes what `get_tools` returned into (name, description,
    parameters) triples: Tool objects, a Toolbox, OpenAI tool dicts
    (`{"type": "function", "function": {...}}`), flat `{"name", ...}`
    dicts, or objects with `model_dump()` (pydantic)."""
    if items is None:
        raise TypeError("get_tools returned None; return a list of tools ([] for none)")
    if isinstance(items, (Tool, dict)):
        items = [items]
    out: list[tuple[str, str, dict]] = []
    for index, item in enumerate(items):
        if isinstance(item, Tool):
            out.append((item.name, item.description or "", item.parameters))
            continue
        if not isinstance(item, dict) and hasattr(item, "model_dump"):
            item = item.model_dump(exclude_none=True)
        if not isinstance(item, dict):
            if callable(item):
                t = tool(item)
                out.append((t.name, t.description or "", t.parameters))
                continue
            raise TypeError(f"tool {index}: expected a Tool or an OpenAI tool dict, got {type(item).__name__}")
        spec = item.get("function") if isinstance(item.get("function"), dict) else item
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tool {index}: no function name")
        description = spec.get("description") or ""
        if not isinstance(description, str):
            raise TypeError(f"tool '{name}': description must be a string")
        parameters = spec.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise TypeError(f"tool '{name}': parameters must be a JSON schema object (dict)")
        out.append((name, description, parameters))
    return out
