"""Every error TAMC raises on purpose, in one tree.

Errors split by who must act. ``InputError`` and its children mean the caller gave something
wrong and can fix it by changing the input (the message says how). ``LedgerError`` and
``IdentityError`` are refusals of the money and trust layers: nothing was written when they are
raised. ::

    TamcError
    ├── InputError                  bad input; fix it and try again
    │   ├── InvalidAmount           not a positive integer of micro-units
    │   ├── InvalidJobSpec          a job file or message that does not parse or validate
    │   ├── InvalidProfile          a machine profile file that does not parse or validate
    │   ├── UnknownMachineKind      a kind that is not one of the five
    │   ├── UnknownMachine          no profile with that id
    │   ├── UnknownJob              no job of that id was posted through this server
    │   ├── InvalidBrokerUrl        not an mqtt://host:port address
    │   └── InvalidOption           a command's option outside what it accepts (names the option)
    ├── LedgerError                 the ledger refused; nothing was written
    │   ├── UnknownAccount          no such account (open it first)
    │   ├── InsufficientFunds       the transfer would overdraw an account
    │   ├── IdempotencyConflict     a key reused for a different request
    │   ├── EscrowError
    │   │   ├── EscrowNotFound      no escrow for that job
    │   │   ├── EscrowExists        the job already has an escrow under another key
    │   │   ├── EscrowClosed        already released or refunded
    │   │   ├── EscrowNotExpired    an expiry refund asked for before the escrow's expiry
    │   │   └── RefundRefused       the machine is at work on the job, or has done it
    │   └── ShareError
    │       ├── SharesAlreadyIssued a machine's cap table is fixed at issue
    │       └── NoShareholders      revenue split for a machine with no shares issued
    ├── IdentityError
    │   ├── InvalidDid              not a did:key for an Ed25519 public key
    │   ├── BadSignature            missing, malformed or not matching the signed fields
    │   └── KeystoreError           keystore file unreadable, corrupt or too open
    ├── HubError                    the message hub cannot do what was asked
    │   ├── BrokerUnavailable       no broker answers at that address
    │   ├── BrokerRefused           the broker refused the login (wrong or missing credentials)
    │   ├── BrokerStartFailed       the local broker could not be started
    │   └── EnvelopeRejected        a received message dropped (its ``reason`` says why)
    ├── SimulationStalled           a virtual-time city stopped moving (a message never delivered); says what was in flight
    ├── ContractStateError          a contract asked to move where its state table forbids (a bug; nothing changed)
    ├── PolicyRefused               a tool refused an action its owners' policy forbids; nothing moved
    │   └── ApprovalRequired        allowed only with the holders' vote: a proposal was opened
    ├── GovernanceError             a proposal that cannot be opened, found or closed
    │   ├── InvalidProposal         an unknown kind or a payload that does not fit it (also an InputError)
    │   ├── UnknownProposal         no proposal with that id
    │   ├── VoteRefused             closed, not a holder, unsigned or signed by someone else
    │   └── ExecutionFailed         a passed proposal whose effect could not be carried out
    ├── ModelError                  the language model cannot be used as configured
    │   ├── InvalidModelConfig      a model setting that does not name a usable model
    │   ├── ModelWeightsMissing     a local model's engine, weights or assembled file is not installed
    │   ├── ModelWeightsMismatch    a local model's file is not the pinned one (size or SHA-256)
    │   └── ModelServerFailed       the local model server did not come up
    ├── MemoryStoreError            the machine's vector memory cannot be used; bidding goes on without it
    │   └── EmbeddingUnavailable    the local embedding model's files are not installed
    ├── AccessError                 the server refused a request for who made it (HTTP 401 or 403)
    │   ├── NotAuthenticated        no token, an unknown or expired one, or a failed login (401)
    │   └── Forbidden               a known principal without the role this needs on that machine (403)
    ├── ControlError                an operator's takeover, command or handback that was not carried out
    │   ├── NotInControl            the sender does not hold the machine (not its operator, or not taken over)
    │   ├── CommandRejected         the machine cannot do that now (its state, or not a thing it can do)
    │   ├── UnknownHandoff          no pending handoff with that id
    │   └── MachineSilent           the machine did not answer a command in time (offline, or its node is down)
    └── DriverError                 a real machine's server is unreachable or answered an error
"""

from __future__ import annotations

__all__ = [
    "AccessError",
    "ApprovalRequired",
    "BadSignature",
    "BrokerRefused",
    "BrokerStartFailed",
    "BrokerUnavailable",
    "CommandRejected",
    "ContractStateError",
    "ControlError",
    "DriverError",
    "EmbeddingUnavailable",
    "EnvelopeRejected",
    "EscrowClosed",
    "EscrowError",
    "EscrowExists",
    "EscrowNotExpired",
    "EscrowNotFound",
    "ExecutionFailed",
    "Forbidden",
    "GovernanceError",
    "HubError",
    "IdempotencyConflict",
    "IdentityError",
    "InputError",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidBrokerUrl",
    "InvalidDid",
    "InvalidJobSpec",
    "InvalidModelConfig",
    "InvalidOption",
    "InvalidProfile",
    "InvalidProposal",
    "KeystoreError",
    "LedgerError",
    "MachineSilent",
    "MemoryStoreError",
    "ModelError",
    "ModelServerFailed",
    "ModelWeightsMismatch",
    "ModelWeightsMissing",
    "NoShareholders",
    "NotAuthenticated",
    "NotInControl",
    "PolicyRefused",
    "RefundRefused",
    "ShareError",
    "SharesAlreadyIssued",
    "SimulationStalled",
    "TamcError",
    "UnknownAccount",
    "UnknownHandoff",
    "UnknownJob",
    "UnknownMachine",
    "UnknownMachineKind",
    "UnknownProposal",
    "VoteRefused",
]


class TamcError(Exception):
    """Root of every error TAMC raises on purpose."""


class InputError(TamcError):
    """The caller's input is wrong; the message says what to change."""


class InvalidAmount(InputError):
    """An amount that is not a positive integer number of micro-units."""


class InvalidJobSpec(InputError):
    """A job description that does not parse or validate."""


class InvalidProfile(InputError):
    """A machine profile file that does not parse or validate."""


class UnknownMachineKind(InputError):
    """A machine kind outside the known five."""


class UnknownJob(InputError):
    """No job of that id was posted through this server (HTTP 404)."""


class UnknownMachine(InputError):
    """No machine profile has that id."""


class LedgerError(TamcError):
    """The ledger refused the operation; the database is unchanged."""


class UnknownAccount(LedgerError):
    """An account id the ledger has never opened."""


class InsufficientFunds(LedgerError):
    """A posting would leave an account below zero."""

    def __init__(self, account: str, balance: int, needed: int, asset: str) -> None:
        self.account, self.balance, self.needed, self.asset = account, balance, needed, asset
        super().__init__(
            f"account {account!r} holds {balance} micro-units of {asset}, "
            f"{needed} needed: fund it first or lower the amount"
        )


class IdempotencyConflict(LedgerError):
    """An idempotency key already used for a different request."""


class EscrowError(LedgerError):
    """Escrow refused the operation."""


class EscrowNotFound(EscrowError):
    """No escrow exists for the job."""


class EscrowExists(EscrowError):
    """The job already has an escrow opened under another idempotency key."""


class EscrowClosed(EscrowError):
    """The escrow was already released or refunded."""


class EscrowNotExpired(EscrowError):
    """Anyone may have an expired escrow refunded to its payer; before its expiry only the payer may."""


class RefundRefused(EscrowError):
    """The job's machine said it started (or finished) the job: its requester may not take the money
    back now (release it after ``done``; a ``failed`` or ``aborted`` job may be refunded)."""


class ShareError(LedgerError):
    """Share-token operation refused."""


class SharesAlreadyIssued(ShareError):
    """A machine's shares are issued once; later changes are share transfers."""


class NoShareholders(ShareError):
    """Revenue cannot be split for a machine that has no shares issued."""


class IdentityError(TamcError):
    """Keys, ids or signatures are not valid."""


class InvalidDid(IdentityError):
    """A string that is not a did:key id of an Ed25519 public key."""


class BadSignature(IdentityError):
    """A signature that is missing, malformed, or does not match the signed fields."""


class KeystoreError(IdentityError):
    """The keystore file cannot be used (unreadable, corrupt, or readable by others)."""


class InvalidBrokerUrl(InputError):
    """A broker address that is not ``mqtt://host:port``."""


class InvalidOption(InputError):
    """A command's option given a value it does not accept: the message names the option as typed
    (``--machines 0``) and what it accepts."""


class HubError(TamcError):
    """The message hub cannot do what was asked."""


class BrokerUnavailable(HubError):
    """No MQTT broker answered at the address."""


class BrokerRefused(HubError):
    """The broker answered but refused this login: no credentials, or not the ones it was given."""


class BrokerStartFailed(HubError):
    """The local broker (mosquitto or embedded) could not be started."""


class EnvelopeRejected(HubError):
    """A received envelope that is dropped. ``reason`` is one of ``REJECT_REASONS`` in hub.envelope."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


class SimulationStalled(TamcError):
    """A city on virtual time had work pending and nothing moved for the watchdog's real seconds."""


class ContractStateError(TamcError):
    """A machine's contract was asked to move from one state to another its transition table does not
    allow: a bug in the caller. The contract is left as it was."""


class PolicyRefused(TamcError):
    """A tool refused an action because the machine's policy forbids it, whatever the model asked.

    ``code`` is a stable id (``policy.floor``, ``policy.payee``, ...) and nothing was written."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class ApprovalRequired(PolicyRefused):
    """The action needs the holders' approval; ``proposal_id`` is the proposal opened for it."""

    def __init__(self, code: str, detail: str, proposal_id: str) -> None:
        self.proposal_id = proposal_id
        super().__init__(code, f"{detail}; proposal {proposal_id} asks the holders to approve it")


class GovernanceError(TamcError):
    """A proposal that cannot be opened, found or closed: unknown, wrong payload, no holders."""


class InvalidProposal(GovernanceError, InputError):
    """A proposal kind that does not exist, or a payload that does not fit its kind."""


class UnknownProposal(GovernanceError):
    """No proposal with that id."""


class VoteRefused(GovernanceError):
    """A vote that does not count: the proposal is closed, the voter held no shares when it opened,
    or the ballot is unsigned or signed by a key that does not own the holder's account."""


class ExecutionFailed(GovernanceError):
    """A passed proposal whose effect could not be carried out (e.g. the wallet cannot pay the
    budget); the proposal is marked failed and nothing of the failed step moved."""


class ModelError(TamcError):
    """The language model cannot be used as configured."""


class InvalidModelConfig(ModelError, InputError):
    """A model setting that names no usable model: say ``rules``, a model string, or a base URL and a name."""


class ModelWeightsMissing(ModelError):
    """A local model's engine, weights or assembled file is not installed; the message names the command."""


class ModelWeightsMismatch(ModelError):
    """A local model's file is not the pinned one; nothing was served from it."""


class ModelServerFailed(ModelError):
    """The local model server did not come up; the message holds its log's tail."""


class ModelTurnFailed(ModelError):
    """A model's turn (a chat answer) ended without an answer: timed out, refused by the server, or
    invalid output past its retries. Carries what the turn cost, for the caller's report."""

    def __init__(self, cause: BaseException, *, calls: int = 0, input_tokens: int = 0, output_tokens: int = 0,
                 latency_ms: float = 0.0) -> None:
        self.kind = type(cause).__name__
        self.calls, self.input_tokens, self.output_tokens, self.latency_ms = calls, input_tokens, output_tokens, latency_ms
        text = " ".join(str(cause).split())
        super().__init__(f"{self.kind}: {text[:300]}")


class MemoryStoreError(TamcError):
    """The machine's vector memory cannot be used (unreadable or corrupt store, no server at the URL,
    no permission). The message names the store and what to do; the machine bids on without memory."""


class EmbeddingUnavailable(MemoryStoreError):
    """The local embedding model's files are missing: install them (the message gives the command)."""


class AccessError(TamcError):
    """The server refused a request because of who made it."""


class NotAuthenticated(AccessError):
    """No token, an unknown or expired one, or a login whose signature did not check."""


class Forbidden(AccessError):
    """The principal is known but lacks the role this needs on this machine."""


class ControlError(TamcError):
    """An operator's takeover, command or handback that was not carried out; nothing changed."""


class NotInControl(ControlError):
    """The sender does not hold the machine: not one of its operators, or it did not take over first."""


class CommandRejected(ControlError, InputError):
    """The machine cannot do that now: a command its state forbids (pause while idle) or that it
    cannot do at all (a printer told to drive somewhere)."""


class UnknownHandoff(ControlError):
    """No pending handoff with that id on the machine (handed back already, or never raised)."""


class MachineSilent(ControlError):
    """The machine did not answer a command in time: it is offline, or its node is down. The command
    may still arrive; its id makes sure it is carried out at most once."""


class DriverError(TamcError):
    """A real machine's server is unreachable or answered an error; the message names it and the call."""
