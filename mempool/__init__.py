"""Pools of unconfirmed messages: transactions, pending tasks, Phase-1 commits, Phase-2 claims.

See docs/mempool.md for the policies.
"""

from mempool.claimpool import ClaimPool, ClaimRecord
from mempool.commitpool import CommitPool, CommitRecord
from mempool.errors import REASONS, MempoolReject
from mempool.taskpool import TaskListing, TaskPool, compute_task_listing
from mempool.txpool import PoolEntry, TxPool, compute_fee_rate

__all__ = [
    "ClaimPool",
    "ClaimRecord",
    "CommitPool",
    "CommitRecord",
    "MempoolReject",
    "PoolEntry",
    "REASONS",
    "TaskListing",
    "TaskPool",
    "TxPool",
    "compute_fee_rate",
    "compute_task_listing",
]
