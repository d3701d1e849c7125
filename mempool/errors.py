"""The one exception every pool raises, and the reason codes it carries.

A reason code is a short stable string meant for peers, RPC clients and
logs; the message says what exactly was wrong. See docs/mempool.md.
"""

from __future__ import annotations

REASONS = (
    # any pool
    "malformed",  # wrong type, ill-typed fields, undecodable bytes
    "duplicate",  # this exact object is already in the pool
    "bad-signature",  # the signer's signature does not verify
    "pool-full",  # the pool is at its limits and the newcomer does not outbid what it would evict
    # transactions
    "nonce-too-low",  # the account already used this nonce on chain
    "nonce-gap-too-large",  # the nonce skips past the account's next pending nonce (no gaps are allowed)
    "too-many-pending",  # the account already has the most pending transactions allowed
    "fee-too-low",  # fee rate below the pool's minimum
    "replacement-fee-too-low",  # replacing a pending transaction needs +10% fee rate and a higher fee
    "insufficient-balance",  # balance minus pending spending does not cover amount (or reward) plus fee
    "zero-amount",  # a transfer of nothing
    "reward-too-low",  # a task reward under the chain minimum
    "invalid",  # any other consensus rule (message has the rule)
    # commits and claims
    "wrong-phase",  # not inside the right phase of the message's slot (clock skew tolerated)
    "wrong-height",  # not for the block after the current tip
    "wrong-task",  # not for the task that height must work on
    "wrong-parent",  # a claim whose block does not extend the current tip
    "duplicate-miner",  # the miner already has a different commit or claim here; the first seen wins
    "commit-mismatch",  # a claim whose block disagrees with its own commit
    "not-committed",  # a claim whose commit is not in the commit pool
)


class MempoolReject(Exception):
    """A transaction, task, commit or claim that a pool refuses, with a reason code."""

    def __init__(self, reason: str, message: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown mempool reason code {reason!r}")
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        """One of REASONS."""
        self.message = message
        """Human-readable detail."""


def reject(reason: str, message: str = "") -> MempoolReject:
    """A MempoolReject to raise (keeps raise sites short)."""
    return MempoolReject(reason, message)
