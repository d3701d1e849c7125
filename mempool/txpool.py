"""The transaction pool: fee-rate ordered, nonce-chained per account, bounded, with replacement.

Policy (docs/mempool.md has the full text):
  * fee rate = fee * 1000 // encoded size (base units per 1000 bytes);
  * each account's pending transactions form a gapless nonce chain starting
    at the account's on-chain nonce; a newcomer must extend the chain or
    replace one of its members;
  * a replacement pays a fee rate >= 110% of the old one and a higher fee;
  * balance is checked against on-chain balance minus the account's pending
    spending (incoming pending transfers are not counted);
  * over the size or count limit, account-chain tails are evicted lowest fee
    rate first; a newcomer that does not outbid every eviction it would
    cause is refused "pool-full".
Each signature is verified once, on admission; consensus's
`validate_transaction` then runs against a state overlay that already has
the sender's pending spending applied.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Iterable, Sequence

import msgpack

from consensus.state import State
from consensus.transition import InvalidBlock, process_transaction, validate_transaction
from pouw.encoding import UINT64_MAX, DecodeError, decode, encode, sha256
from pouw.keys import is_valid_signature
from pouw.types import (
    Account,
    Block,
    Bond,
    ChainParams,
    TaskSubmission,
    Transaction,
    Transfer,
    Unbond,
    get_tx_cost,
    get_tx_sender,
)

from mempool.errors import MempoolReject, reject
from mempool.taskpool import TaskPool

FEE_RATE_SCALE = 1000
"""Fee rates are base units per this many encoded bytes."""
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
"""Default limit on the summed encoded size of pooled transactions."""
DEFAULT_MAX_COUNT = 50_000
"""Default limit on the number of pooled transactions."""
DEFAULT_MAX_PER_ACCOUNT = 128
"""Default limit on one account's pending chain (like Bitcoin's ancestor limit)."""
DEFAULT_MIN_FEE_RATE = 1000
"""Default relay floor: 1 base unit per byte."""
REPLACEMENT_RATE_PERCENT = 110
"""A replacement's fee rate must be at least this percentage of the replaced one's."""
BLOCK_HEADROOM = 64 * 1024
"""Bytes select_for_block leaves by default for the commit, work and key reveals (as assemble does)."""
RECENT_BAD_SIGNATURES = 10_000
"""How many ids of transactions with bad signatures are remembered, so they are not verified again."""

# Wire layout of a Transfer: [tag 1, [sender, recipient, amount, fee, nonce, signature]].
# The fast paths below rely on it and switch themselves off if the type ever changes.
_TRANSFER_PREFIX = b"\x92\x01\x96"
_SIGNATURE_SUFFIX_MARK = b"\xc4\x40"  # bin8 of 64 bytes, the last field
_FAST_TRANSFER = Transfer.TAG == 1 and tuple(f.name for f in dataclasses.fields(Transfer)) == (
    "sender",
    "recipient",
    "amount",
    "fee",
    "nonce",
    "signature",
)
_MAX_TRANSFER_SIZE = 3 + 2 * 34 + 3 * 9 + 66


def compute_fee_rate(fee: int, size: int) -> int:
    """Fee rate in base units per FEE_RATE_SCALE bytes, rounded down."""
    return fee * FEE_RATE_SCALE // size


def is_replacement_fee_enough(old_fee: int, old_size: int, new_fee: int, new_size: int) -> bool:
    """True when a replacement pays a higher fee and at least 110% of the old fee per byte.

    The rates are compared exactly (cross-multiplied), not as rounded
    compute_fee_rate values, so +10% of the fee at equal size always suffices.
    """
    return new_fee > old_fee and new_fee * old_size * 100 >= old_fee * new_size * REPLACEMENT_RATE_PERCENT


@dataclass(frozen=True, slots=True)
class PoolEntry:
    """A pooled transaction and the figures the pool orders it by."""

    tx: Transaction
    """The transaction (its signature was verified on admission)."""
    tx_id: bytes
    """SHA-256 of its canonical encoding."""
    sender: bytes
    """The paying account."""
    nonce: int
    """The sender's nonce it uses."""
    size: int
    """Encoded size in bytes."""
    fee: int
    """Absolute fee."""
    cost: int
    """Coins it takes from the sender: amount (or reward) plus fee."""
    fee_rate: int
    """compute_fee_rate(fee, size)."""
    seq: int
    """Arrival order in this pool (older is smaller)."""


def _is_u64(x: object) -> bool:
    return type(x) is int and 0 <= x <= UINT64_MAX


def _is_bytes(x: object, n: int) -> bool:
    return type(x) is bytes and len(x) == n


def compute_checked_encoding(tx: object) -> bytes:
    """The canonical encoding of a well-typed transaction object; raises MempoolReject("malformed").

    Transfers are checked field by field (the hot path); task submissions,
    which nest specs, by a strict decode of their encoding.
    """
    kind = type(tx)
    if kind is Transfer:
        if not (
            _is_bytes(tx.sender, 32)
            and _is_bytes(tx.recipient, 32)
            and _is_u64(tx.amount)
            and _is_u64(tx.fee)
            and _is_u64(tx.nonce)
            and _is_bytes(tx.signature, 64)
        ):
            raise reject("malformed", "transfer fields do not have their wire types")
        return encode(tx)
    if kind in (TaskSubmission, Bond, Unbond):
        try:
            data = encode(tx)
            decode(Transaction, data)
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise reject("malformed", f"{kind.__name__}: {exc}") from None
        return data
    raise reject("malformed", f"expected a transaction, got {kind.__name__}")


def decode_transaction(data: bytes, max_size: int) -> Transaction:
    """Strictly decode a transaction's wire bytes; raises DecodeError.

    Transfers (nearly all traffic) take a direct path: one msgpack unpack,
    type checks, one pack to prove canonical form. Anything else, or
    anything that path does not like, goes through pouw.encoding.decode,
    which gives the authoritative answer and reason.
    """
    if _FAST_TRANSFER and type(data) is bytes and len(data) <= _MAX_TRANSFER_SIZE and data[:3] == _TRANSFER_PREFIX:
        try:
            plain = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True, max_map_len=0, max_ext_len=0)
        except Exception:  # noqa: BLE001 - the strict decoder below reports the reason
            plain = None
        if plain is not None:
            sender, recipient, amount, fee, nonce, signature = plain[1]
            if (
                _is_bytes(sender, 32)
                and _is_bytes(recipient, 32)
                and _is_u64(amount)
                and _is_u64(fee)
                and _is_u64(nonce)
                and _is_bytes(signature, 64)
                and msgpack.packb(plain, use_bin_type=True) == data
            ):
                return Transfer(sender, recipient, amount, fee, nonce, signature)
    return decode(Transaction, data, max_size=max_size)


def compute_signing_payload(tx: Transaction, data: bytes) -> bytes:
    """The bytes `tx`'s signature covers, cut from its canonical encoding `data` when it is a Transfer.

    Canonical msgpack of [f1..f5] is 0x95 followed by the fields' own
    encodings, which `data` already holds between its 3-byte prefix and the
    66-byte signature field.
    """
    if _FAST_TRANSFER and type(tx) is Transfer and data[:3] == _TRANSFER_PREFIX and data[-66:-64] == _SIGNATURE_SUFFIX_MARK:
        return b"\x95" + data[3:-66]
    return tx.signing_payload()


def is_tx_signature_valid(tx: Transaction, data: bytes) -> bool:
    """True when `tx` (whose canonical encoding is `data`) carries its sender's valid signature."""
    sender = tx.sender if type(tx) is Transfer else get_tx_sender(tx)
    return is_valid_signature(sender, tx.SIGN_KIND, compute_signing_payload(tx, data), tx.signature)


class TxPool:
    """Pending transactions of all accounts, with the TaskPool of pending task submissions.

    The pool follows one chain state: call remove_for_block after each block
    connects and readd_for_disconnect for each block a reorg disconnects,
    passing the state after the change.
    """

    def __init__(
        self,
        params: ChainParams,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_count: int = DEFAULT_MAX_COUNT,
        max_per_account: int = DEFAULT_MAX_PER_ACCOUNT,
        min_fee_rate: int = DEFAULT_MIN_FEE_RATE,
    ):
        if min(max_bytes, max_count, max_per_account) < 1 or min_fee_rate < 0:
            raise ValueError("pool limits must be positive and the fee floor non-negative")
        self.params = params
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.max_per_account = max_per_account
        self.min_fee_rate = min_fee_rate
        self.tasks = TaskPool()
        """Pending task submissions (kept in step with this pool; read it, do not pop it)."""
        self._entries: dict[bytes, PoolEntry] = {}
        self._chains: dict[bytes, list[PoolEntry]] = {}  # sender -> gapless nonce chain
        self._spent: dict[bytes, int] = {}  # sender -> summed cost of its chain
        self._bytes = 0
        self._seq = 0
        # Min-heap of (fee rate, -seq, tx id) over chain tails; stale items are skipped lazily.
        self._evict_heap: list[tuple[int, int, bytes]] = []
        self._bad_signatures: OrderedDict[bytes, None] = OrderedDict()

    # --- reading -----------------------------------------------------------
    def get(self, tx_id: bytes) -> Transaction | None:
        """A pooled transaction by id."""
        entry = self._entries.get(tx_id)
        return None if entry is None else entry.tx

    def get_entry(self, tx_id: bytes) -> PoolEntry | None:
        """A pooled transaction's entry (fee rate, size, arrival) by id."""
        return self._entries.get(tx_id)

    def get_account_txs(self, sender: bytes) -> list[Transaction]:
        """An account's pending transactions in nonce order."""
        return [e.tx for e in self._chains.get(sender, ())]

    def get_pending_nonce(self, sender: bytes, state: State) -> int:
        """The nonce an account's next new transaction should use (on-chain nonce plus pending)."""
        account = state.get_account(sender)
        chain = self._chains.get(sender)
        if chain and chain[0].nonce == account.nonce:
            return account.nonce + len(chain)
        return account.nonce

    def get_spent(self, sender: bytes) -> int:
        """Coins an account's pending transactions take in total."""
        return self._spent.get(sender, 0)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        """Summed encoded size of the pooled transactions."""
        return self._bytes

    # --- admission ---------------------------------------------------------
    def add(self, tx: Transaction, state: State) -> bytes:
        """Admit a transaction against `state` (the tip); returns its id or raises MempoolReject."""
        data = compute_checked_encoding(tx)
        return self._admit(tx, data, sha256(data), state, None)

    def add_encoded(self, data: bytes, state: State) -> bytes:
        """Admit a transaction from its wire bytes (decoded once, never re-encoded); returns its id."""
        if type(data) is not bytes:
            data = bytes(data) if isinstance(data, (bytearray, memoryview)) else data
        try:
            tx = decode_transaction(data, self.params.max_block_size)
        except DecodeError as exc:
            raise reject("malformed", str(exc)) from None
        return self._admit(tx, data, sha256(data), state, None)

    def add_many(
        self, txs: Sequence[Transaction], state: State, executor: Executor | None = None
    ) -> list[bytes | MempoolReject]:
        """Admit transactions in order; each result is its id or its rejection.

        With an executor, signatures are verified in parallel first (libsodium
        releases the GIL); the pool rules then run in order on this thread.
        """
        prepared: list[tuple[Transaction, bytes, bytes] | MempoolReject] = []
        for tx in txs:
            try:
                data = compute_checked_encoding(tx)
                prepared.append((tx, data, sha256(data)))
            except MempoolReject as exc:
                prepared.append(exc)
        verdicts: list[bool | None] = [None] * len(prepared)
        if executor is not None:
            todo = [i for i, p in enumerate(prepared) if not isinstance(p, MempoolReject) and p[2] not in self._entries]
            chunk = 64
            batches = [todo[k : k + chunk] for k in range(0, len(todo), chunk)]

            def verify(batch: list[int]) -> list[bool]:
                return [is_tx_signature_valid(prepared[i][0], prepared[i][1]) for i in batch]

            for batch, oks in zip(batches, executor.map(verify, batches)):
                for i, ok in zip(batch, oks):
                    verdicts[i] = ok
        results: list[bytes | MempoolReject] = []
        for p, verdict in zip(prepared, verdicts):
            if isinstance(p, MempoolReject):
                results.append(p)
                continue
            try:
                results.append(self._admit(p[0], p[1], p[2], state, verdict))
            except MempoolReject as exc:
                results.append(exc)
        return results

    def _admit(self, tx: Transaction, data: bytes, tx_id: bytes, state: State, signature_ok: bool | None) -> bytes:
        # Cheap checks first, the signature last but one (as Bitcoin's policy checks precede script checks).
        if tx_id in self._entries:
            raise reject("duplicate", "transaction already in the pool")
        if tx_id in self._bad_signatures:
            raise reject("bad-signature", "transaction was already refused for its signature")
        is_transfer = type(tx) is Transfer
        sender = tx.sender if is_transfer else get_tx_sender(tx)
        nonce = tx.nonce
        account = state.get_account(sender)
        chain = self._chains.get(sender)
        if chain and chain[0].nonce != account.nonce:
            self._resync_sender(sender, account)  # the pool was behind the state it is given
            chain = self._chains.get(sender)
        chain = chain or []
        if nonce < account.nonce:
            raise reject("nonce-too-low", f"nonce {nonce} is below the account's next nonce {account.nonce}")
        index = nonce - account.nonce
        if index > len(chain):
            raise reject(
                "nonce-gap-too-large",
                f"nonce {nonce} leaves a gap: the account's next pending nonce is {account.nonce + len(chain)}",
            )
        size = len(data)
        fee = tx.fee
        rate = compute_fee_rate(fee, size)
        if rate < self.min_fee_rate:
            raise reject("fee-too-low", f"fee rate {rate} is below the pool minimum {self.min_fee_rate} per {FEE_RATE_SCALE} bytes")
        if is_transfer:
            if tx.amount == 0:
                raise reject("zero-amount", "transfer of zero coins")
            cost = tx.amount + fee
        else:
            if type(tx) is TaskSubmission and tx.reward < self.params.min_task_reward:
                raise reject("reward-too-low", f"reward {tx.reward} is below the minimum {self.params.min_task_reward}")
            cost = get_tx_cost(tx)
        if cost > UINT64_MAX:
            raise reject("invalid", "amount plus fee overflows 64 bits")
        old = None
        spent_total = self._spent.get(sender, 0)
        if index < len(chain):
            old = chain[index]
            if not is_replacement_fee_enough(old.fee, old.size, fee, size):
                raise reject(
                    "replacement-fee-too-low",
                    f"replacing fee {old.fee} ({old.size} bytes) needs a higher fee and at least "
                    f"{REPLACEMENT_RATE_PERCENT}% of its fee per byte; got fee {fee} ({size} bytes)",
                )
            spent_before = sum(e.cost for e in chain[:index])
            spent_after = spent_total - old.cost + cost
        else:
            if len(chain) >= self.max_per_account:
                raise reject("too-many-pending", f"the account already has {len(chain)} pending transactions")
            spent_before = spent_total
            spent_after = spent_total + cost
        if spent_after > account.balance:
            raise reject(
                "insufficient-balance",
                f"balance {account.balance} does not cover {cost} plus {spent_after - cost} pending",
            )
        if signature_ok is None:
            signature_ok = is_tx_signature_valid(tx, data)
        if not signature_ok:
            self._remember_bad_signature(tx_id)
            raise reject("bad-signature", "signature does not verify")
        # Consensus's own rules, on a view where the pending predecessors have been applied.
        view = state.child()
        view.set_account(sender, dataclasses.replace(account, balance=account.balance - spent_before, nonce=nonce))
        try:
            validate_transaction(view, tx, self.params, signature_checked=True)
        except InvalidBlock as exc:
            raise reject("invalid", str(exc)) from None
        self._seq += 1
        entry = PoolEntry(tx, tx_id, sender, nonce, size, fee, cost, rate, self._seq)
        if old is None:
            self._append(entry)
        else:
            self._replace(old, entry)
        self._trim(entry, old)
        return tx_id

    def _remember_bad_signature(self, tx_id: bytes) -> None:
        self._bad_signatures[tx_id] = None
        if len(self._bad_signatures) > RECENT_BAD_SIGNATURES:
            self._bad_signatures.popitem(last=False)

    # --- index maintenance -------------------------------------------------
    def _index_add(self, entry: PoolEntry) -> None:
        self._entries[entry.tx_id] = entry
        self._bytes += entry.size
        self._spent[entry.sender] = self._spent.get(entry.sender, 0) + entry.cost
        if type(entry.tx) is TaskSubmission:
            self.tasks.add(entry.tx, entry.tx_id)

    def _index_remove(self, entry: PoolEntry) -> None:
        del self._entries[entry.tx_id]
        self._bytes -= entry.size
        self._spent[entry.sender] -= entry.cost
        if type(entry.tx) is TaskSubmission:
            self.tasks.remove(entry.tx_id)

    def _forget_if_empty(self, sender: bytes) -> None:
        if not self._chains.get(sender):
            self._chains.pop(sender, None)
            self._spent.pop(sender, None)

    def _push_tail(self, entry: PoolEntry) -> None:
        heapq.heappush(self._evict_heap, (entry.fee_rate, -entry.seq, entry.tx_id))
        if len(self._evict_heap) > 2 * len(self._entries) + 1024:
            self._evict_heap = [(c[-1].fee_rate, -c[-1].seq, c[-1].tx_id) for c in self._chains.values() if c]
            heapq.heapify(self._evict_heap)

    def _append(self, entry: PoolEntry) -> None:
        self._chains.setdefault(entry.sender, []).append(entry)
        self._index_add(entry)
        self._push_tail(entry)

    def _replace(self, old: PoolEntry, new: PoolEntry) -> None:
        chain = self._chains[old.sender]
        index = old.nonce - chain[0].nonce
        chain[index] = new
        self._index_remove(old)
        self._index_add(new)
        if index == len(chain) - 1:
            self._push_tail(new)

    def _pop_tail(self, sender: bytes) -> PoolEntry:
        chain = self._chains[sender]
        entry = chain.pop()
        self._index_remove(entry)
        if chain:
            self._push_tail(chain[-1])
        else:
            self._forget_if_empty(sender)
        return entry

    def _truncate(self, sender: bytes, index: int) -> list[PoolEntry]:
        """Remove an account's entries from `index` on (tail first, so no gap is ever left)."""
        removed = []
        while len(self._chains.get(sender, ())) > index:
            removed.append(self._pop_tail(sender))
        return removed

    def _drop_head(self, sender: bytes, count: int) -> list[PoolEntry]:
        chain = self._chains[sender]
        head = chain[:count]
        del chain[:count]
        for entry in head:
            self._index_remove(entry)
        self._forget_if_empty(sender)
        return head

    def _resync_sender(self, sender: bytes, account: Account) -> list[PoolEntry]:
        """Make an account's chain valid on a state: drop used nonces, gaps and what the balance no longer covers."""
        chain = self._chains.get(sender)
        if not chain:
            return []
        used = 0
        while used < len(chain) and chain[used].nonce < account.nonce:
            used += 1
        removed = self._drop_head(sender, used) if used else []
        chain = self._chains.get(sender)
        if chain and chain[0].nonce != account.nonce:
            return removed + self._truncate(sender, 0)
        spent = 0
        for i, entry in enumerate(chain or ()):
            spent += entry.cost
            if spent > account.balance:
                return removed + self._truncate(sender, i)
        return removed

    # --- limits and eviction ------------------------------------------------
    def _is_over_limits(self) -> bool:
        return self._bytes > self.max_bytes or len(self._entries) > self.max_count

    def _peek_lowest_tail(self) -> PoolEntry | None:
        heap = self._evict_heap
        while heap:
            entry = self._entries.get(heap[0][2])
            if entry is not None and self._chains[entry.sender][-1] is entry:
                return entry
            heapq.heappop(heap)
        return None

    def _trim(self, newcomer: PoolEntry, replaced: PoolEntry | None) -> None:
        """Evict lowest-rate tails until within limits; undo the admission if the newcomer does not outbid them."""
        evicted: list[PoolEntry] = []
        while self._is_over_limits():
            victim = self._peek_lowest_tail()
            if victim is None or victim is newcomer or victim.fee_rate >= newcomer.fee_rate:
                self._undo_admission(newcomer, replaced, evicted)
                raise reject(
                    "pool-full",
                    f"fee rate {newcomer.fee_rate} does not beat the lowest evictable rate "
                    f"{victim.fee_rate if victim else '-'} in a full pool",
                )
            heapq.heappop(self._evict_heap)
            self._pop_tail(victim.sender)
            evicted.append(victim)

    def _undo_admission(self, newcomer: PoolEntry, replaced: PoolEntry | None, evicted: list[PoolEntry]) -> None:
        if replaced is not None:
            self._replace(newcomer, replaced)
        else:
            self._pop_tail(newcomer.sender)
        for entry in reversed(evicted):  # each was a tail when evicted, so re-appending restores order
            self._append(entry)

    # --- blocks --------------------------------------------------------------
    def select_for_block(self, state: State, max_count: int | None = None, max_bytes: int | None = None) -> list[Transaction]:
        """Transactions for the next block on `state`: best fee rate first across accounts, nonce order within one.

        Each account contributes a prefix of its chain (the head with the best
        fee rate among all accounts' next transactions is taken first, as in
        Ethereum's price-and-nonce heap); every chosen transaction applies in
        order on `state`, and the encoded sizes sum to at most `max_bytes`.
        """
        max_count = self.params.max_block_transactions if max_count is None else max_count
        max_bytes = self.params.max_block_size - BLOCK_HEADROOM if max_bytes is None else max_bytes
        height = state.get_status().height + 1
        trial = state.child()
        heap: list[tuple[int, int, bytes, int]] = []
        for sender, chain in self._chains.items():
            start = trial.get_account(sender).nonce - chain[0].nonce
            if 0 <= start < len(chain):
                heap.append((-chain[start].fee_rate, chain[start].seq, sender, start))
        heapq.heapify(heap)
        chosen: list[Transaction] = []
        size = 0
        while heap and len(chosen) < max_count:
            _, _, sender, index = heapq.heappop(heap)
            chain = self._chains[sender]
            entry = chain[index]
            if size + entry.size > max_bytes:
                continue  # the rest of this account must wait; smaller heads of others may still fit
            try:
                # validate_transaction raises before process_transaction writes anything,
                # so a refused transaction leaves `trial` untouched.
                process_transaction(trial, entry.tx, height, self.params, signature_checked=True)
            except InvalidBlock:
                continue  # e.g. the task queue filled up: this account's later nonces cannot follow
            chosen.append(entry.tx)
            size += entry.size
            if index + 1 < len(chain):
                nxt = chain[index + 1]
                heapq.heappush(heap, (-nxt.fee_rate, nxt.seq, sender, index + 1))
        return chosen

    def remove_for_block(self, block: Block, state: State) -> list[bytes]:
        """After `block` connected (`state` is the new tip): drop its transactions and those it made invalid.

        Returns the ids removed. Only the block's senders can have lost
        balance or nonces, so only their chains are re-checked.
        """
        if type(block) is not Block:
            raise reject("malformed", f"expected a Block, got {type(block).__name__}")
        senders = {get_tx_sender(tx) for tx in block.body.transactions}
        removed: list[bytes] = []
        for sender in senders:
            if sender in self._chains:
                removed += [e.tx_id for e in self._resync_sender(sender, state.get_account(sender))]
        return removed

    def readd_for_disconnect(self, block: Block, state: State) -> list[bytes]:
        """After `block` was disconnected (`state` is its parent's): return its transactions to the pool.

        The block's transactions go back in block order under the usual
        policy, followed by the pending transactions of the same senders
        (which now come after them in nonce order); every other account is
        re-checked because the block may have funded it. Returns the ids now
        pooled that came from the block.
        """
        if type(block) is not Block:
            raise reject("malformed", f"expected a Block, got {type(block).__name__}")
        txs = block.body.transactions
        senders = {get_tx_sender(tx) for tx in txs}
        held: list[PoolEntry] = []
        for sender in senders:
            held += reversed(self._truncate(sender, 0))
        self.revalidate(state)
        readded = []
        for tx in txs:
            data = encode(tx)
            try:
                # The block's signatures were verified when it connected.
                readded.append(self._admit(tx, data, sha256(data), state, True))
            except MempoolReject:
                pass
        for entry in held:
            try:
                self._admit(entry.tx, encode(entry.tx), entry.tx_id, state, True)
            except MempoolReject:
                pass
        return readded

    def revalidate(self, state: State) -> list[bytes]:
        """Re-check every account's chain against `state`; returns the ids dropped."""
        removed: list[bytes] = []
        for sender in list(self._chains):
            removed += [e.tx_id for e in self._resync_sender(sender, state.get_account(sender))]
        return removed

    def iter_entries(self) -> Iterable[PoolEntry]:
        """Every entry, account by account in nonce order."""
        for chain in self._chains.values():
            yield from chain
