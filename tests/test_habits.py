"""A small model's habits (``agents.habits``): a tool called with its own schema still runs, and a
model that keeps calling the same tool is made to answer in words instead of running out of requests."""

from __future__ import annotations

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits

from agents.habits import WORDS_PLEASE, SmallModelHabits, answer_in_words


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

    result = agent.run_sync("How much money do you have?", usage_limits=UsageLimits(request_limit=5))
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

    first = agent.run_sync("one")
    second = agent.run_sync("two", message_history=first.all_messages())  # a new turn starts a new count
    assert first.output == second.output == "done"
    for turn in (first, second):
        assert sum(isinstance(p, ToolCallPart) for m in turn.new_messages() for p in getattr(m, "parts", [])) == 2


def test_a_call_written_out_as_the_answer_is_sent_back_for_words() -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        retried = any(WORDS_PLEASE in str(getattr(p, "content", "")) for m in messages for p in getattr(m, "parts", []))
        return ModelResponse(parts=[TextPart("You earned 412.50 units." if retried else '{"name": "earnings", "arguments": {"period": "week"}}')])

    agent: Agent[None, str] = Agent(FunctionModel(model))
    agent.output_validator(answer_in_words)
    assert agent.run_sync("How much this week?").output == "You earned 412.50 units."
