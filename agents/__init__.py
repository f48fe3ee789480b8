"""The actors and the LLM: the machine node, the requester, the machine's agent and its chat, the
job workflows and their handoffs. Pricing (``pricing``), memory (``memory``) and the money of a job
(``ledger.settlement``) are packages below this one. Heavy parts (pydantic-ai, the model clients,
langgraph) load only from their own modules, so nothing is exported here."""

__all__: list[str] = []
