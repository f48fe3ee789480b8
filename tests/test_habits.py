"""A small model's habits (``agents.habits``): a tool called with its own schema still runs, and a
model that keeps calling the same tool is made to answer in words instead of running out of requests.
(``asyncio.run``, not ``run_sync``: that leaves its event loop open for the collector to warn about.)"""

from __future__ import annotations

import asyncio

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits

from agents.habits import NOT_A_CALL, WORDS_PLEASE, SmallModelHabits, answer_in_words


def test_an_echoed_schema_runs_the_tool_and_a_repeated_call_gets_an_answer_in_words() -> None:
    offered: list[list[str]] = []

    def small_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        offered.append([t.name for t in info.function_tools])
        if not info.function_tools:  # no tools left: it can only answer
            said = [p.content for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)]
            return ModelResponse(parts=[TextPart(f"The balance is {said[-1]}.")])
        # the 0.5B's habits: its own schema as the arguments, and the same call again and again
        return ModelResponse(parts=[ToolCallPart("balance", {"type": "object", "properties": {}, "additionalProperties": False})])

    ran: list[str] = []
    agent: Agent[None, str] = Agent(FunctionModel(small_model), capabilities=[SmallModelHabits()])

    @agent.tool_plain
    def balance() -> str:
        """The wallet's balance."""
        ran.append("balance")
        return "412.50 units"

    result = asyncio.run(agent.run("How much money do you have?", usage_limits=UsageLimits(request_limit=5)))
    assert result.output == "The balance is 412.50 units."
    assert len(ran) == 2  # the echoed schema was dropped, so the call ran; the repeat ran, then the tools went
    assert offered == [["balance"], ["balance"], []]


def test_the_cap_counts_calls_since_the_person_last_spoke() -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not info.function_tools:
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart("read", {"what": f"x{len(messages)}"})])  # a new read each time

    agent: Agent[None, str] = Agent(FunctionModel(model), capabilities=[SmallModelHabits(max_calls=2)])

    @agent.tool_plain
    def read(what: str) -> str:
        """Read something."""
        return what

    first = asyncio.run(agent.run("one"))
    second = asyncio.run(agent.run("two", message_history=first.all_messages()))  # a new turn starts a new count
    assert first.output == second.output == "done"
    for turn in (first, second):
        assert sum(isinstance(p, ToolCallPart) for m in turn.new_messages() for p in getattr(m, "parts", [])) == 2


def test_a_call_written_out_as_the_answer_is_sent_back_for_words() -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        retried = any(WORDS_PLEASE in str(getattr(p, "content", "")) for m in messages for p in getattr(m, "parts", []))
        return ModelResponse(parts=[TextPart("You earned 412.50 units." if retried else '{"name": "earnings", "arguments": {"period": "week"}}')])

    agent: Agent[None, str] = Agent(FunctionModel(model))
    agent.output_validator(answer_in_words)
    assert asyncio.run(agent.run("How much this week?")).output == "You earned 412.50 units."


def test_output_the_server_cannot_parse_is_sent_back_once_with_what_went_wrong() -> None:
    """llama.cpp answers HTTP 500 when the model calls a tool that does not exist; the model is asked
    again, told why, instead of the turn failing."""
    from pydantic_ai.exceptions import ModelHTTPError

    seen: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        told = [str(getattr(p, "content", "")) for m in messages for p in getattr(m, "parts", [])]
        if not any(NOT_A_CALL in t for t in told):
            raise ModelHTTPError(500, "local", {"code": 500, "message": "The model produced output that does not match the expected "
                                                                        "peg-native format", "type": "server_error"})
        seen.append("retried")
        return ModelResponse(parts=[TextPart("Wear is 37.5%.")])

    agent: Agent[None, str] = Agent(FunctionModel(model), capabilities=[SmallModelHabits()])
    assert asyncio.run(agent.run("What is your wear?")).output == "Wear is 37.5%." and seen == ["retried"]

    def broken(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise ModelHTTPError(500, "local", {"message": "out of memory"})  # any other server error is not the model's habit

    other: Agent[None, str] = Agent(FunctionModel(broken), capabilities=[SmallModelHabits()])
    with pytest.raises(ModelHTTPError, match="out of memory"):
        asyncio.run(other.run("What is your wear?"))


def test_fences_copied_into_an_answer_are_taken_out() -> None:
    copied = '<untrusted source="the machine\'s tools">\nIn the last 7 days I was paid 42.50 units.\n</untrusted>'
    assert answer_in_words(copied) == "In the last 7 days I was paid 42.50 units."
    assert answer_in_words("Paid 42.50 units.") == "Paid 42.50 units."
