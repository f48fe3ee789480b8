"""Money, shares and identities: what a machine owns and who it is.

Knows nothing of agents or the market; other packages call it.
"""

from ledger._db import create_tables, transaction
from ledger.book import DEFAULT_URL, Ledger
from ledger.charter import Charter
from ledger.governance import Governance
from ledger.identity import (
    Identity,
    canonical_json,
    did_from_public_key,
    public_key_from_did,
    sign_document,
    verify_document,
)
from ledger.keystore import Keystore
from ledger.models import (
    ISSUANCE,
    MONEY,
    Account,
    AccountKind,
    Escrow,
    EscrowState,
    Leg,
    Posting,
    StatementLine,
    machine_wallet,
    maintenance_budget,
    reserve,
    share_asset,
)
from ledger.payout import pay_holders
from ledger.proposals import AuditRecord, Execution, Proposal, ProposalKind, Standing, Tally, sign_ballot
from ledger.split import split_pro_rata

__all__ = [
    "DEFAULT_URL",
    "ISSUANCE",
    "MONEY",
    "Account",
    "AccountKind",
    "AuditRecord",
    "Charter",
    "Escrow",
    "EscrowState",
    "Execution",
    "Governance",
    "Identity",
    "Keystore",
    "Ledger",
    "Leg",
    "Posting",
    "Proposal",
    "ProposalKind",
    "Standing",
    "StatementLine",
    "Tally",
    "canonical_json",
    "create_tables",
    "did_from_public_key",
    "machine_wallet",
    "maintenance_budget",
    "pay_holders",
    "public_key_from_did",
    "reserve",
    "share_asset",
    "sign_ballot",
    "sign_document",
    "split_pro_rata",
    "transaction",
    "verify_document",
]
