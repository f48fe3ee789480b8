"""The machine node, in parts whose imports run one way (``node.py`` draws them).

``book`` contracts, their states and the scheduling rules · ``outbox`` the one way out (and the
inbox) · ``diary`` what goes to memory · ``mandate`` what the holders decided · ``pricer`` the
decision on a call · ``bidder`` calls from hearing to answer · ``holding`` who holds the machine ·
``effects`` what a job's workflow does to the machine · ``runner`` the workflow's steps and ticks ·
``workshop`` a won job from award to payment · ``recovery`` open workflows after a restart ·
``control`` operators' commands · ``node`` the facade that wires them.
"""

from agents.node.book import Contract, ContractBook, ContractState, QueuedContract
from agents.node.node import MachineNode
from agents.node.stats import NodeStats

__all__ = ["Contract", "ContractBook", "ContractState", "MachineNode", "NodeStats", "QueuedContract"]
