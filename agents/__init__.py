"""The brains of a machine. For now the rule engine; the LLM agent, requester agent, workflows
and memory join it in later issues."""

from agents.rules import CostBreakdown, Decision, MachineStatus, MarketContext, Rule, decide

__all__ = ["CostBreakdown", "Decision", "MachineStatus", "MarketContext", "Rule", "decide"]
