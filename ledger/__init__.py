"""Money, shares and identities: what a machine owns and who it is.

Knows nothing of agents or the market; other packages call it.
"""

from ledger.book import DEFAULT_URL, Ledger
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
    share_asset,
)
from ledger.split import split_pro_rata

__all__ = [
    "DEFAULT_URL",
    "ISSUANCE",
    "MONEY",
    "Account",
    "AccountKind",
    "Escrow",
    "EscrowState",
    "Identity",
    "Keystore",
    "Ledger",
    "Leg",
    "Posting",
    "StatementLine",
    "canonical_json",
    "did_from_public_key",
    "public_key_from_did",
    "share_asset",
    "sign_document",
    "split_pro_rata",
    "verify_document",
]
