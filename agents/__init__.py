"""The brains of a machine: the rule engine, the LLM agent checked by it, chat, the machine node
and the requester. Heavy parts (pydantic-ai, the model clients) load only from their own modules;
job workflows and vector memory join in later issues."""

from agents.rules import CostBreakdown, Decision, MachineStatus, MarketContext, Rule, decide

__all__ = ["CostBreakdown", "Decision", "MachineStatus", "MarketContext", "Rule", "decide"]
