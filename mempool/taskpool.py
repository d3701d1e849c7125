"""The augmented mempool of the paper: unconfirmed task submissions as a max-heap by reward.

Order is consensus's own (`consensus.rules.get_queue_order_key`): highest
reward first, then lowest task id, so the pending ranking shown to users is
the order the chain would select those tasks in once they are confirmed.
The TxPool keeps one TaskPool in step with its pending TaskSubmissions;
a standalone TaskPool may also be used directly (peek/pop).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from consensus.rules import TASK_PENDING, TASK_SCHEDULED, TASK_WAITING, get_queue_order_key, is_standing_task
from consensus.state import State
from pouw.encoding import hash_of
from pouw.types import ChainParams, QueueEntry, TaskSubmission

from mempool.errors import reject

def get_task_order_key(reward: int, task_id: bytes) -> tuple[int, bytes]:
    """Sort key of a task: consensus's queue order (reward descending, task id ascending)."""
    return get_queue_order_key(QueueEntry(reward, task_id))


class TaskPool:
    """Pending task submissions, best first; removal is lazy (O(log n) amortised)."""

    def __init__(self) -> None:
        self._live: dict[bytes, TaskSubmission] = {}
        self._heap: list[tuple[tuple[int, bytes], bytes]] = []

    def add(self, submission: TaskSubmission, task_id: bytes | None = None) -> bytes:
        """Add a submission (already validated by the caller); returns its task id."""
        if type(submission) is not TaskSubmission:
            raise reject("malformed", f"expected TaskSubmission, got {type(submission).__name__}")
        task_id = hash_of(submission) if task_id is None else task_id
        if task_id in self._live:
            raise reject("duplicate", "task already pending")
        self._live[task_id] = submission
        heapq.heappush(self._heap, (get_task_order_key(submission.reward, task_id), task_id))
        return task_id

    def remove(self, task_id: bytes) -> TaskSubmission | None:
        """Drop a task (confirmed, replaced or evicted); returns it if it was pending."""
        submission = self._live.pop(task_id, None)
        # Stale heap items are skipped on read; rebuild when they dominate.
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(get_task_order_key(s.reward, t), t) for t, s in self._live.items()]
            heapq.heapify(self._heap)
        return submission

    def _drop_stale(self) -> None:
        while self._heap and self._heap[0][1] not in self._live:
            heapq.heappop(self._heap)

    def peek(self) -> TaskSubmission | None:
        """The best pending task, or None."""
        self._drop_stale()
        return self._live[self._heap[0][1]] if self._heap else None

    def pop(self) -> TaskSubmission | None:
        """Remove and return the best pending task, or None."""
        self._drop_stale()
        if not self._heap:
            return None
        _, task_id = heapq.heappop(self._heap)
        return self._live.pop(task_id)

    def ranked(self) -> list[TaskSubmission]:
        """All pending tasks, best first."""
        return [self._live[t] for _, t in sorted((get_task_order_key(s.reward, t), t) for t, s in self._live.items())]

    def get(self, task_id: bytes) -> TaskSubmission | None:
        """A pending task by id."""
        return self._live.get(task_id)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._live

    def __len__(self) -> int:
        return len(self._live)


@dataclass(frozen=True)
class TaskListing:
    """One row of `pouw task list`: a task, where it stands, and its reward."""

    task_id: bytes
    """The task's id (the standing task's id for standing rows)."""
    reward: int
    """Escrowed (or offered, when pending) reward; 0 for the standing task."""
    status: str
    """consensus.rules.TASK_SCHEDULED, TASK_WAITING or TASK_PENDING (one vocabulary with RPC)."""
    height: int
    """The height it is scheduled for; 0 unless scheduled."""
    title: str
    """The submitter's title ("standing task" for the standing task)."""


def compute_task_listing(state: State, pending: TaskPool, params: ChainParams) -> list[TaskListing]:
    """Scheduled tasks by height, then the confirmed queue merged with pending tasks in selection order.

    Pending tasks are ranked where they would stand if confirmed now; a
    pending task the chain already knows (confirmed meanwhile) is listed once.
    """
    status = state.get_status()
    rows: list[TaskListing] = []
    for sched in status.scheduled:
        if is_standing_task(params, sched.task_id):
            rows.append(TaskListing(sched.task_id, 0, TASK_SCHEDULED, sched.height, "standing task"))
            continue
        record = state.get_task(sched.task_id)
        title = record.submission.title if record is not None else ""
        reward = record.submission.reward if record is not None else 0
        rows.append(TaskListing(sched.task_id, reward, TASK_SCHEDULED, sched.height, title))
    waiting: list[tuple[tuple[int, bytes], TaskListing]] = []
    confirmed = set()
    for entry in status.unselected:
        record = state.get_task(entry.task_id)
        title = record.submission.title if record is not None else ""
        confirmed.add(entry.task_id)
        waiting.append((get_queue_order_key(entry), TaskListing(entry.task_id, entry.reward, TASK_WAITING, 0, title)))
    for sub in pending.ranked():
        task_id = hash_of(sub)
        if task_id in confirmed or state.get_task(task_id) is not None:
            continue
        waiting.append((get_task_order_key(sub.reward, task_id), TaskListing(task_id, sub.reward, TASK_PENDING, 0, sub.title)))
    waiting.sort(key=lambda item: item[0])
    return rows + [row for _, row in waiting]
