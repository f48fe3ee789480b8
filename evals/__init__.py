"""Eval suites that score the machines' decisions — bidding, governance, escalation, chat
groundedness, prompt injection and market days — against the rule engine and any model
(``tamc eval``; ``docs/evals.md``)."""
