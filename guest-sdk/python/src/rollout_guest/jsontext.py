"""JSON text as it crosses the WIT boundary, and tool results rendered for
the model exactly as the Rust SDK renders them (`format_tool_value`)."""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(value: Any) -> str:
    """Compact JSON (no spaces, UTF-8 kept), as serde_json writes it.
    Refuses NaN/Infinity, which are not JSON (ValueError)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def loads_strict(text: str) -> Any:
    """Parses JSON as serde_json does: refuses the NaN/Infinity extensions
    Python accepts, and numbers too large for a float (`1e400`)."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def format_float(f: float) -> str:
    """A finite float as serde_json 1.0.154 writes it: the shortest digits
    that read back to `f`, fixed notation from 1e-5 to below 1e16, e.g.
    `8.0`, `2.5`, `0.00001`, `1e+20`, `1.5e-7`."""
    if f == 0.0:
        return "-0.0" if math.copysign(1.0, f) < 0 else "0.0"
    text = repr(f)
    sign = ""
    if text.startswith("-"):
        sign, text = "-", text[1:]
    mantissa, _, exp = text.partition("e")
    exponent = int(exp) if exp else 0
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    k = exponent - len(frac)  # value = int(digits) * 10**k
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped
    length = len(digits)
    kk = length + k  # 10**(kk-1) <= value < 10**kk
    if 0 <= k and kk <= 16:
        out = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        out = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        out = "0." + "0" * (-kk) + digits
    else:
        exponent_text = f"e+{kk - 1}" if kk > 0 else f"e{kk - 1}"
        out = digits[0] + ("." + digits[1:] if length > 1 else "") + exponent_text
    return sign + out


def json_text(value: Any) -> str:
    """Compact JSON of a tool result, numbers written as serde_json writes
    them; NaN/Infinity become `null` (as `serde_json::json!` makes them),
    and values JSON has no type for are written as their `str()`."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(format_float(value) if math.isfinite(value) else "null")
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.append(",")
            out.append(json.dumps(key if isinstance(key, str) else str(key), ensure_ascii=False))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        out.append(json.dumps(str(value), ensure_ascii=False))


def format_tool_value(value: Any) -> str:
    """Renders a tool result for the model as the Rust SDK does: numbers
    plainly (`8`, `2.5`; a whole float below 1e15 without `.0`), strings as
    they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return format_float(value)
    return json_text(value)
