"""The trainer's rollout request, decoded from the WIT record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class RolloutRequest:
    """The parts of the trainer's `/v1/rollout/init` an agent needs."""

    rollout_id: str
    #: The conversation so far (OpenAI chat messages). Copy it before
    #: appending (`messages = list(ctx.request.messages)`).
    messages: list = field(default_factory=list)
    #: Sampling parameters; `ctx.chat` applies them.
    completion_params: dict = field(default_factory=dict)
    #: Free-form metadata from the trainer, e.g. `ground_truth`.
    metadata: dict = field(default_factory=dict)
    tool_server_url: Optional[str] = None
    #: Advisory cap on LLM calls.
    max_turns: int = 10
    #: Advisory cap on the sum of completion tokens.
    max_tokens_total: int = 8192

    @classmethod
    def from_wit(cls, r: Any) -> "RolloutRequest":
        """Decodes WIT `rollout-request` (its JSON strings) or anything with
        the same attributes. Raises ValueError for malformed JSON."""
        return cls(
            rollout_id=r.rollout_id,
            messages=_parse(r.messages, "messages", list, "array"),
            completion_params=_parse(r.completion_params, "completion_params", dict, "object"),
            metadata=_parse(r.metadata, "metadata", dict, "object"),
            tool_server_url=r.tool_server_url,
            max_turns=r.max_turns,
            max_tokens_total=r.max_tokens_total,
        )


def _parse(text: str, what: str, kind: type, kind_name: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"host sent malformed {what}: {e}") from None
    if not isinstance(value, kind):
        raise ValueError(f"host sent {what} that is not a JSON {kind_name}")
    return value
