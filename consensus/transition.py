"""The state transition: `apply_block(state, block, params)`.

Written in the style of ethereum/execution-specs: one short function per rule,
every violation raises `InvalidBlock` with a precise reason, and the function
writes only to the `State` overlay it is given (drop the overlay to undo a
failed attempt). Dice recomputation needs the model and test blobs and is done
by `consensus.work.verify_block_work` before a block is connected; this module
checks everything that needs only the block and the state.
"""

from __future__ import annotations

from dataclasses import replace

from pouw.encoding import UINT64_MAX, encode
from pouw.types import (
    DICE_SCALE,
    KEY_TEST,
    KEY_TRAIN,
    MAX_CHECKPOINT_HEADER_BYTES,
    MODE_NO_TEST_KEY,
    MODE_NO_TRAIN_KEY,
    MODE_NORMAL,
    TASK_MODES,
    ZERO_HASH,
    ZERO_KEY,
    ZERO_SIGNATURE,
    Account,
    Block,
    BlockBody,
    BlockHeader,
    Bond,
    ClaimEvidence,
    Commit,
    ChainParams,
    ChainStatus,
    HistoryEntry,
    QueueEntry,
    ScheduledTask,
    TaskRecord,
    TaskSubmission,
    Transaction,
    Transfer,
    Unbond,
    WorkProof,
    get_tx_cost,
    get_tx_sender,
)
from consensus.clock import is_block_timestamp_valid
from consensus.forkchoice import get_sibling_key
from consensus.rules import (
    compute_body_root,
    compute_body_root_of,
    compute_claim_bond,
    compute_evidence_root,
    compute_transactions_root,
    compute_commit_binding,
    compute_insert_queue,
    compute_unselected_root,
    compute_forfeit,
    compute_required_mode,
    compute_trajectory_root,
    compute_work_payload,
    get_scheduled_task_id,
    get_train_data_digest,
    get_work_task_id,
    is_key_for_task,
    is_minting,
    is_standing_task,
)
from consensus.sigcheck import SERIAL, SignatureChecker
from consensus.state import State
from pouw.keys import is_valid_signature


class InvalidBlock(Exception):
    """A block (or a transaction in it) breaks a consensus rule; the message says which."""


def require(condition: bool, reason: str) -> None:
    """Raise InvalidBlock(reason) unless `condition` holds."""
    if not condition:
        raise InvalidBlock(reason)


def checked_add(a: int, b: int, what: str) -> int:
    """a + b, refusing results outside unsigned 64 bits."""
    total = a + b
    require(0 <= total <= UINT64_MAX, f"{what} overflows 64 bits")
    return total


# --- genesis -----------------------------------------------------------------


def make_genesis_block(params: ChainParams) -> Block:
    """The genesis block of `params`: no work, no transactions, the standing task scheduled."""
    body = BlockBody(transactions=(), key_reveals=(), commit=None, work=None)
    status = get_genesis_status(params, ZERO_HASH)
    header = BlockHeader(
        height=0,
        slot=0,
        prev_hash=params.chain_id,
        body_root=compute_body_root(body),
        timestamp=params.genesis_time,
        size=len(encode(body)),
        task_id=params.standing_task.task_id,
        task_mode=MODE_NORMAL,
        unselected_root=compute_unselected_root(status),
        miner=ZERO_KEY,
        dice_ppm=0,
        work_signature=ZERO_SIGNATURE,
        signature=ZERO_SIGNATURE,
    )
    return Block(header, body)


def get_genesis_status(params: ChainParams, genesis_hash: bytes) -> ChainStatus:
    """The chain status right after genesis: heights 1 and 2 mine the standing task."""
    standing = params.standing_task.task_id
    supply = 0
    for alloc in params.allocations:
        supply = checked_add(supply, alloc.amount, "genesis supply")
    return ChainStatus(
        height=0,
        tip_hash=genesis_hash,
        min_slot=0,
        scheduled=(ScheduledTask(1, standing), ScheduledTask(2, standing)),
        train_key=b"",
        unselected=(),
        supply=supply,
    )


def apply_genesis(state: State, params: ChainParams) -> Block:
    """Write the genesis state into `state`; returns the genesis block."""
    block = make_genesis_block(params)
    for alloc in params.allocations:
        account = state.get_account(alloc.address)
        state.set_account(alloc.address, replace(account, balance=checked_add(account.balance, alloc.amount, "allocation")))
    state.set_status(get_genesis_status(params, block.hash))
    state.set_history(HistoryEntry(0, block.hash, params.standing_task.task_id, MODE_NORMAL, ZERO_KEY, 0, ZERO_HASH, 0))
    return block


# --- blocks --------------------------------------------------------------------


def check_block(block: Block, params: ChainParams) -> None:
    """The rules a block must keep whatever its parent: header, body shape, commit; raises InvalidBlock.

    Cheap (one hash of the body, two signatures) and needing no state, these
    run first on every block a node is handed, before any lookup or download.
    """
    header, body = block.header, block.body
    check_header(header, params)
    check_body_shape(header, body, params)
    check_commit(header, body.commit, body.work)


def apply_block(state: State, block: Block, params: ChainParams, sigcheck: SignatureChecker = SERIAL) -> None:
    """Check `block` against the state it extends and apply it; raises InvalidBlock.

    `sigcheck` verifies the transactions' signatures up front (in parallel
    when it has threads); the rules are the same either way.
    """
    check_block(block, params)
    status = state.get_status()
    header, body = block.header, block.body
    validate_header_context(status, header)
    task = validate_selected_task(state, status, header, params)
    validate_key_reveals(state, status, header, body, task, params)
    validate_work_task(header, body, task, params)

    bad = sigcheck.find_invalid(body.transactions)
    require(bad is None, f"transaction {bad}: bad signature")
    fees = 0
    for index, tx in enumerate(body.transactions):
        try:
            process_transaction(state, tx, header.height, params, signature_checked=True)
        except InvalidBlock as exc:
            raise InvalidBlock(f"transaction {index}: {exc}") from None
        fees = checked_add(fees, tx.fee, "fees")

    for index, evidence in enumerate(body.evidence):
        try:
            fees = checked_add(fees, process_claim_evidence(state, header, evidence, params), "fees")
        except InvalidBlock as exc:
            raise InvalidBlock(f"evidence {index}: {exc}") from None

    paid = process_rewards(state, header, task, fees, params)
    new_status = process_schedule(state, header, body, params)
    require(
        header.unselected_root == compute_unselected_root(new_status),
        "unselected_root does not match the unfinished tasks after this block",
    )
    state.set_history(
        HistoryEntry(
            height=header.height,
            block_hash=block.hash,
            task_id=header.task_id,
            task_mode=header.task_mode,
            winner=header.miner,
            dice_ppm=header.dice_ppm,
            model_digest=body.work.model_digest,
            paid=paid,
            slot=header.slot,
            carried_next_key=any(r.which == KEY_TRAIN for r in body.key_reveals),
        )
    )


def check_header(header: BlockHeader, params: ChainParams) -> None:
    """Mode, Dice range, timestamp inside Phase 2 of the slot, and the miner's header signature."""
    require(header.height > 0, "height 0 is genesis")
    require(header.task_mode in TASK_MODES, f"unknown task mode {header.task_mode}")
    require(header.dice_ppm <= DICE_SCALE, f"dice {header.dice_ppm} ppm exceeds {DICE_SCALE}")
    require(
        is_block_timestamp_valid(params, header.slot, header.timestamp),
        f"timestamp {header.timestamp} is not in Phase 2 of slot {header.slot}",
    )
    require(header.is_signature_valid(), "bad header signature")


def check_body_shape(header: BlockHeader, body: BlockBody, params: ChainParams) -> None:
    """Size, transaction count, body root, and a commit and work present."""
    size = len(encode(body))
    require(header.size == size, f"header size {header.size} does not match body size {size}")
    require(size <= params.max_block_size, f"body of {size} bytes exceeds {params.max_block_size}")
    require(
        len(body.transactions) <= params.max_block_transactions,
        f"{len(body.transactions)} transactions exceed {params.max_block_transactions}",
    )
    require(header.body_root == compute_body_root(body), "body_root does not match the body")
    require(body.commit is not None and body.work is not None, "block carries no commit or work")


def check_commit(header: BlockHeader, commit: Commit, work: WorkProof) -> None:
    """The commit binds the work's model and whole trajectory to the header's miner, height and slot; the work agrees with the header."""
    require(commit.height == header.height, "commit is for another height")
    require(commit.slot == header.slot, "commit is for another slot")
    require(commit.miner == header.miner, "commit was made by another miner")
    require(commit.binding == compute_commit_binding(work.model_digest, header.miner), "model does not match the commit binding")
    require(commit.is_signature_valid(), "bad commit signature")
    require(work.dice_ppm == header.dice_ppm, "work and header claim different Dice")
    require(len(work.checkpoints) >= 2, "work needs the initial checkpoint and at least one trained segment")
    require(work.checkpoints[0].update_norm == 0, "checkpoint 0 declares a weight update")
    require(all(0 < c.size <= MAX_CHECKPOINT_HEADER_BYTES and c.parts_size > 0 for c in work.checkpoints),
            f"a checkpoint header is empty or over {MAX_CHECKPOINT_HEADER_BYTES} bytes, or names no parts")
    require(commit.trajectory_root == compute_trajectory_root(work.checkpoints), "the checkpoints are not the committed trajectory")


def validate_header_context(status: ChainStatus, header: BlockHeader) -> None:
    """Height, parent and slot follow the state's tip."""
    require(header.height == status.height + 1, f"height {header.height} does not follow tip height {status.height}")
    require(header.prev_hash == status.tip_hash, "prev_hash is not the tip of the state")
    require(header.slot >= status.min_slot, f"slot {header.slot} is not after the parent's slot")


def validate_selected_task(state: State, status: ChainStatus, header: BlockHeader, params: ChainParams) -> TaskRecord | None:
    """The header names the task scheduled for its height; returns its record (None for the standing task)."""
    scheduled = status.scheduled[0]
    require(scheduled.height == header.height, "state has no task scheduled for this height")
    require(header.task_id == get_scheduled_task_id(status), "task_id is not the task selected for this height")
    if is_standing_task(params, header.task_id):
        return None
    record = state.get_task(header.task_id)
    require(record is not None, "selected task is unknown to the state")
    return record


def validate_key_reveals(
    state: State, status: ChainStatus, header: BlockHeader, body: BlockBody, task: TaskRecord | None, params: ChainParams
) -> None:
    """The keys due in this slot, and the mode they dictate.

    The body carries, in this order: its own task's test key (that is what
    makes it MODE_NORMAL, and it may do so only where the chain allows the
    task to be scored: docs/protocol.md §5), then the training key of the
    next height's task if that is a published task and the key was revealed.
    Each matches its commitment. The header's mode must be the one
    `compute_required_mode` derives: the miner cannot choose an easier one.
    """
    reveals = list(body.key_reveals)
    carries_test = bool(reveals) and reveals[0].which == KEY_TEST
    if carries_test:
        own = reveals.pop(0)
        require(task is not None, "the standing task has no test key")
        require(own.task_id == header.task_id, "the test key reveal names another task")
        require(is_key_for_task(task.submission, KEY_TEST, own.key), "revealed test key does not match its commitment")
    required = compute_required_mode(params, status, header.task_id, header.slot, carries_test)
    require(header.task_mode == required, f"task mode {header.task_mode} is not the mode {required} the chain dictates")
    if carries_test:
        require(required == MODE_NORMAL, "a test key may only be carried by a block that scores its task on it")
    next_id = status.scheduled[1].task_id
    if reveals:
        nxt = reveals.pop(0)
        require(nxt.which == KEY_TRAIN and nxt.task_id == next_id, "the second key reveal must be the next task's training key")
        record = state.get_task(next_id)
        require(record is not None and not is_standing_task(params, next_id), "the next height mines no published task")
        require(is_key_for_task(record.submission, KEY_TRAIN, nxt.key), "revealed training key does not match its commitment")
    require(not reveals, "too many key reveals")


def validate_work_task(header: BlockHeader, body: BlockBody, task: TaskRecord | None, params: ChainParams) -> None:
    """The commit names the task the block's mode trains; the work signature covers model, data, task and Dice."""
    work_task = get_work_task_id(params, header.task_id, header.task_mode)
    require(body.commit.task_id == work_task, "commit is for another task")
    submission = None if task is None else task.submission
    train_digest = get_train_data_digest(header.prev_hash, header.task_mode, submission)
    payload = compute_work_payload(body.work.model_digest, train_digest, header.task_id, header.dice_ppm)
    require(is_valid_signature(header.miner, b"work", payload, header.work_signature), "bad work signature")


# --- transactions --------------------------------------------------------------


def validate_transaction(state: State, tx: Transaction, params: ChainParams, signature_checked: bool = False) -> None:
    """Signature, nonce, balance and type rules of one transaction against `state`."""
    sender = get_tx_sender(tx)
    require(signature_checked or tx.is_signature_valid(), "bad signature")
    account = state.get_account(sender)
    require(tx.nonce == account.nonce, f"nonce {tx.nonce} is not the account's next nonce {account.nonce}")
    cost = get_tx_cost(tx)
    require(cost <= UINT64_MAX, "amount plus fee overflows 64 bits")
    require(account.balance >= cost, f"balance {account.balance} is below amount plus fee {cost}")
    if isinstance(tx, Transfer):
        require(tx.amount > 0, "transfer of zero coins")
    elif isinstance(tx, TaskSubmission):
        validate_task_submission(state, tx, params)
    elif isinstance(tx, Bond):
        require(tx.amount > 0, "bond of zero coins")
    else:
        require(tx.amount <= account.bonded, f"unbond of {tx.amount} exceeds the bond {account.bonded}")


def validate_task_submission(state: State, tx: TaskSubmission, params: ChainParams) -> None:
    """Reward floor, queue room, a valid spec and two distinct usable blobs."""
    require(tx.reward >= params.min_task_reward, f"reward {tx.reward} is below the minimum {params.min_task_reward}")
    require(len(state.get_status().unselected) < params.max_unselected_tasks, "the task queue is full")
    require(state.get_task(tx.task_id) is None, "task already submitted")
    # ModelSpec and TrainSpec validate themselves on construction and decoding.
    for name, blob in (("training", tx.train_blob), ("test", tx.test_blob)):
        require(blob.digest != ZERO_HASH and blob.size > 0, f"{name} blob has no digest or size")
    require(tx.train_blob.digest != tx.test_blob.digest, "training and test blobs are the same")
    require(tx.train_blob.key_commitment != tx.test_blob.key_commitment, "training and test blobs share a key")


def process_transaction(
    state: State, tx: Transaction, height: int, params: ChainParams, signature_checked: bool = False
) -> None:
    """Validate and apply one transaction (its signature too, unless already checked)."""
    validate_transaction(state, tx, params, signature_checked)
    sender = get_tx_sender(tx)
    account = state.get_account(sender)
    account = replace(account, balance=account.balance - get_tx_cost(tx), nonce=account.nonce + 1)
    if isinstance(tx, Transfer):
        state.set_account(sender, account)
        dest = state.get_account(tx.recipient)
        state.set_account(tx.recipient, replace(dest, balance=checked_add(dest.balance, tx.amount, "recipient balance")))
    elif isinstance(tx, TaskSubmission):
        state.set_account(sender, account)
        process_task_submission(state, tx, height)
    elif isinstance(tx, Bond):
        state.set_account(sender, replace(account, bonded=checked_add(account.bonded, tx.amount, "bond")))
    else:
        state.set_account(sender, process_unbond(account, tx, height, params))


def process_task_submission(state: State, tx: TaskSubmission, height: int) -> None:
    """Escrow the reward in a new task record and queue the task."""
    task_id = tx.task_id
    state.set_task(task_id, TaskRecord(submission=tx, escrow=tx.reward, submitted_height=height, selected_height=0))
    status = state.get_status()
    queue = compute_insert_queue(status.unselected, QueueEntry(tx.reward, task_id))
    state.set_status(replace(status, unselected=queue))


def process_unbond(account: Account, tx: Unbond, height: int, params: ChainParams) -> Account:
    """Release coins whose unbonding delay has passed, then start unbonding `tx.amount` (the delay restarts)."""
    if account.unbonding and height >= account.unbond_height:
        account = replace(account, balance=checked_add(account.balance, account.unbonding, "balance"), unbonding=0, unbond_height=0)
    if tx.amount == 0:
        return account
    return replace(account, bonded=account.bonded - tx.amount,
                   unbonding=checked_add(account.unbonding, tx.amount, "unbonding"),
                   unbond_height=height + params.unbond_delay_blocks)


# --- claim evidence ----------------------------------------------------------------


def validate_claim_evidence(state: State, height: int, evidence: ClaimEvidence, params: ChainParams) -> int:
    """Check that `evidence` shows a false claim on this chain; returns the bond it forfeits.

    A claim that ranked above the block that won its height (same parent,
    same slot, same task, a better rank by fork choice's own order) would
    have won had it been true: honest nodes verify claims in that order. So
    it failed verification, and everything that shows it is checked here
    without a blob: the claimant's signature, the body root of the claimed
    block from its parts, its commit and trajectory, and the chain's history.
    """
    claim = evidence.header
    require(0 < claim.height < height, "evidence for a height this block does not follow")
    require(height - claim.height <= params.evidence_window_blocks, "evidence older than the evidence window")
    require(claim.is_signature_valid(), "the claim's header signature does not verify")
    root = compute_body_root_of(evidence.commit, evidence.work, evidence.key_reveals, evidence.transactions_root, evidence.evidence_root)
    require(root == claim.body_root, "the evidence does not match the claim's body root")
    check_commit(claim, evidence.commit, evidence.work)
    winner, parent = state.get_history(claim.height), state.get_history(claim.height - 1)
    require(winner is not None and parent is not None, "no block of that height on this chain")
    require(claim.prev_hash == parent.block_hash, "the claim is not on this chain's parent")
    require(claim.slot == winner.slot and claim.task_id == winner.task_id, "the claim did not compete in the winner's slot")
    require(claim.hash != winner.block_hash, "the claim is the winning block")
    winner_header = BlockHeader(
        winner.height, winner.slot, parent.block_hash, ZERO_HASH, 0, 0, winner.task_id, winner.task_mode,
        ZERO_HASH, winner.winner, winner.dice_ppm, ZERO_SIGNATURE,
    )
    claim_key = get_sibling_key(claim, any(r.which == KEY_TRAIN for r in evidence.key_reveals), params)
    winner_key = get_sibling_key(winner_header, winner.carried_next_key, params)
    require(claim_key[:-1] > winner_key[:-1], "the claim does not rank above the block that won its height")
    require(not state.is_forfeited(claim.miner, claim.height), "that claimant's bond was already forfeited for this height")
    account = state.get_account(claim.miner)
    amount = min(compute_claim_bond(params, evidence.work), account.bonded + account.unbonding)
    require(amount > 0, "the claimant holds no bond")
    return amount


def process_claim_evidence(state: State, header: BlockHeader, evidence: ClaimEvidence, params: ChainParams) -> int:
    """Forfeit a false claim's bond (bonded coins first): half burned, half paid to this block's miner (returned)."""
    return process_claim_evidence_at(state, header.height, evidence, params)


def process_claim_evidence_at(state: State, height: int, evidence: ClaimEvidence, params: ChainParams) -> int:
    """process_claim_evidence for a block at `height`."""
    amount = validate_claim_evidence(state, height, evidence, params)
    claimant = evidence.header.miner
    account = state.get_account(claimant)
    from_bond = min(amount, account.bonded)
    state.set_account(claimant, replace(account, bonded=account.bonded - from_bond, unbonding=account.unbonding - (amount - from_bond)))
    state.set_forfeited(claimant, evidence.header.height)
    burned = amount - amount // 2
    status = state.get_status()
    state.set_status(replace(status, supply=status.supply - burned))
    return amount // 2


# --- rewards and task schedule --------------------------------------------------


def process_rewards(state: State, header: BlockHeader, task: TaskRecord | None, fees: int, params: ChainParams) -> int:
    """Pay the miner (`fees` includes its share of forfeited bonds) and settle the task's escrow; returns the miner's pay.

    Only standing-task work mints the block reward (so dealing a task to
    yourself earns nothing). Modes 0 and 2 pay the escrow to the miner; mode 1
    burns `compute_forfeit` of it and refunds the rest; mode 3 refunds it all.
    """
    pay = checked_add(params.block_reward if is_minting(header, params) else 0, fees, "miner pay")
    burned = 0
    if task is not None:
        escrow = task.escrow
        state.set_task(header.task_id, replace(task, escrow=0))
        if header.task_mode in (MODE_NORMAL, MODE_NO_TEST_KEY):
            pay = checked_add(pay, escrow, "miner pay")
        else:
            burned = compute_forfeit(escrow, params) if header.task_mode == MODE_NO_TRAIN_KEY else 0
            publisher = task.submission.publisher
            acct = state.get_account(publisher)
            state.set_account(publisher, replace(acct, balance=checked_add(acct.balance, escrow - burned, "refund")))
    miner = state.get_account(header.miner)
    state.set_account(header.miner, replace(miner, balance=checked_add(miner.balance, pay, "miner balance")))
    status = state.get_status()
    minted = params.block_reward if is_minting(header, params) else 0
    state.set_status(replace(status, supply=checked_add(status.supply, minted, "supply") - burned))
    return pay


def process_schedule(state: State, header: BlockHeader, body: BlockBody, params: ChainParams) -> ChainStatus:
    """Advance the tip, keep the next task's training key if this block carried it, and select the task of height h+2.

    The task of height h+2 is the first task of the queue (reward, then id)
    that was included at least `task_maturity_blocks` before this block; none
    mature: the standing task. Maturity makes every branch a node may switch
    to (at most `finality_depth` < maturity deep) train the same tasks.
    """
    status = state.get_status()
    target = header.height + 2
    chosen, queue = params.standing_task.task_id, status.unselected
    for index, entry in enumerate(status.unselected):
        record = state.get_task(entry.task_id)
        if record.submitted_height + params.task_maturity_blocks <= header.height:
            chosen, queue = entry.task_id, status.unselected[:index] + status.unselected[index + 1:]
            state.set_task(chosen, replace(record, selected_height=target))
            break
    next_train = [r.key for r in body.key_reveals if r.which == KEY_TRAIN]
    new_status = ChainStatus(
        height=header.height,
        tip_hash=header.hash,
        min_slot=header.slot + 1,
        scheduled=(status.scheduled[1], ScheduledTask(target, chosen)),
        train_key=next_train[0] if next_train else b"",
        unselected=queue,
        supply=status.supply,
    )
    state.set_status(new_status)
    return new_status


def make_claim_evidence(block: Block) -> ClaimEvidence:
    """The evidence that shows a claimed block, without its transactions (their root stands in)."""
    body = block.body
    return ClaimEvidence(block.header, body.commit, body.work, body.key_reveals,
                         compute_transactions_root(body.transactions), compute_evidence_root(body.evidence))
