"""The brains of a machine: the rule engine, the LLM agent checked by it, chat, the vector memory,
the machine node and the requester. Heavy parts (pydantic-ai, the model clients, chromadb, ONNX)
load only from their own modules; job workflows join in a later issue."""

from agents.rules import CostBreakdown, Decision, MachineStatus, MarketContext, Rule, decide

__all__ = ["CostBreakdown", "Decision", "MachineStatus", "MarketContext", "Rule", "decide"]
