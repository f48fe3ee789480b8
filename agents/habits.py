"""How the agent copes with a small model's habits, as a pydantic-ai capability the chat and
governance roles carry (any model gets it; a capable one never trips it).

Seen with the local Qwen2.5-Coder 0.5B and 1.5B (``agents.local_model``):

- **Echoed schemas**: a tool without parameters called with its own JSON schema as arguments
  (``{"type": "object", "properties": {}}``), which pydantic rejects as extra fields, so the call
  never runs. Arguments the tool does not declare are dropped before validation (the model's call
  stays in the history as it was).
- **Repeated calls**: once a tool has answered, the model calls it again instead of writing the
  answer, until the request limit ends the run with nothing said. After a repeated call, or after
  ``max_calls`` calls in one turn, the tools are withdrawn for the next request: the model can then
  only answer in words, from the results it already has.
- **A call written as the answer**: with the tools withdrawn, the 0.5B writes the call out as text.
  ``answer_in_words`` sends it back once or twice asking for words; if it persists the run fails and
  the caller answers without the model (chat's offline answer).
- **Output the server cannot parse**: a call of a tool that does not exist, or a call with text
  after it; llama.cpp then answers HTTP 500 ("does not match the expected … format") instead of a
  message. The model is asked once more, told what went wrong (``NOT_A_CALL``), as for a bad answer.
- **Echoed fences**: the 0.5B copies the request's ``<untrusted source=…>`` tags into its answer;
  ``answer_in_words`` takes them out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic_ai import ModelRetry, RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelRequest, ModelResponse, ToolCallPart, UserPromptPart
from pydantic_ai.tools import ToolDefinition

__all__ = ["MAX_TOOL_CALLS", "NOT_A_CALL", "WORDS_PLEASE", "SmallModelHabits", "answer_in_words"]

WORDS_PLEASE = "That is a tool call, and no tool is offered now. Write the answer in plain words, from the tool results above."
"""The retry ``answer_in_words`` sends (pydantic-ai passes it as the person's words: it does not start a new turn)."""
NOT_A_CALL = ("That was neither a call of one of the offered tools, with its declared arguments and nothing after it, nor "
              "an answer. Call one offered tool, or write the answer in plain words.")
"""The retry sent when the server could not parse what the model wrote."""
MAX_TOOL_CALLS = 20
"""Tool calls one answer may make before the model must write it: room for "check everything" (a
capable model reads a dozen tools), a stop for a small model that wanders from tool to tool. A
repeated call stops it sooner."""


@dataclass
class SmallModelHabits(AbstractCapability[Any]):
    max_calls: int = MAX_TOOL_CALLS

    async def prepare_tools(self, ctx: RunContext[Any], tool_defs: list[ToolDefinition]) -> list[ToolDefinition]:
        calls = _calls_this_turn(ctx.messages)
        seen = {(name, args) for name, args in calls[:-1]}
        if len(calls) >= self.max_calls or (calls and calls[-1] in seen):
            return []  # answer in words now, from what the tools already said
        return tool_defs

    async def on_model_request_error(self, ctx: RunContext[Any], *, request_context: Any, error: Exception) -> Any:
        if unparsed_output(error):
            raise ModelRetry(NOT_A_CALL)
        raise error

    async def before_tool_validate(self, ctx: RunContext[Any], *, call: ToolCallPart, tool_def: ToolDefinition,
                                   args: Any) -> Any:
        declared = set((tool_def.parameters_json_schema or {}).get("properties") or {})
        parsed = _as_dict(args)
        if parsed is None or set(parsed) <= declared:
            return args
        return {k: v for k, v in parsed.items() if k in declared}


def unparsed_output(error: BaseException) -> bool:
    """The server generated an answer but could not parse it into a message (llama.cpp's tool-call parser)."""
    return isinstance(error, ModelHTTPError) and error.status_code == 500 and "does not match the expected" in str(error.body)


def _as_dict(args: Any) -> dict[str, Any] | None:
    if isinstance(args, dict):
        return args
    if isinstance(args, str) and args.strip():
        try:
            value = json.loads(args)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    return None


def _calls_this_turn(messages: list[Any]) -> list[tuple[str, str]]:
    """The (tool, arguments) the model called since the person's last words."""
    calls: list[tuple[str, str]] = []
    for m in messages:
        if isinstance(m, ModelRequest) and any(isinstance(p, UserPromptPart) and WORDS_PLEASE not in str(p.content) for p in m.parts):
            calls = []
        elif isinstance(m, ModelResponse):
            calls += [(p.tool_name, json.dumps(_as_dict(p.args) or {}, sort_keys=True)) for p in m.parts if isinstance(p, ToolCallPart)]
    return calls


_FENCE_TAG = re.compile(r'</?untrusted(?:\s+source="[^"]*")?>\n?')


def answer_in_words(text: str) -> str:
    """An output validator for a role answering in text: a tool call written out as the answer
    (``{"name": …, "arguments": …}``) is sent back for words; the prompt's ``<untrusted>`` fences,
    copied into the answer, are taken out (the words inside stay)."""
    parsed = _as_dict(text.strip().removeprefix("```json").removesuffix("```").strip())
    if parsed is not None and {"name", "arguments"} <= set(parsed):
        raise ModelRetry(WORDS_PLEASE)
    return _FENCE_TAG.sub("", text).strip() or text
