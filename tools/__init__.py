"""What an agent may do, one toolset per concern: telemetry, wallet, bidding, governance, memory.

Each tool checks its arguments and the machine's policy itself, whatever the model asked, and
records what it did or refused in ``MachineDeps.actions``. The plain functions beside the toolsets
(``pay_expense``, ``place_bid``, ``propose``, ...) raise ``PolicyRefused`` for direct callers; the
toolset wrappers hand the refusal back to the model as data, so it can explain it.
"""

from tools.bidding import bidding_tools
from tools.deps import MachineDeps, MachinePort, ToolAction
from tools.governance import governance_tools
from tools.memory import memory_tools
from tools.telemetry import telemetry_tools
from tools.wallet import wallet_tools

__all__ = [
    "ALL_TOOLSETS",
    "MachineDeps",
    "MachinePort",
    "ToolAction",
    "bidding_tools",
    "governance_tools",
    "memory_tools",
    "telemetry_tools",
    "wallet_tools",
]

ALL_TOOLSETS = (telemetry_tools, wallet_tools, bidding_tools, governance_tools, memory_tools)
