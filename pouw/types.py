"""Wire and chain types: transactions, commits, claims, blocks, and chain state records.

Every type is a frozen dataclass whose canonical encoding (pouw.encoding) is
its id preimage. Signatures cover the encoding of every field but the
signature itself, under a per-type domain tag (pouw.keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, ClassVar, Union

from pouw.encoding import Fixed, Hash32, MaxLen, encode, hash_of
from pouw.keys import KeyPair, is_valid_signature
from pouw.seg.spec import ModelSpec, TrainSpec

PublicKey = Annotated[bytes, Fixed(32)]
"""An Ed25519 public key; also an account address."""

Signature = Annotated[bytes, Fixed(64)]
"""An Ed25519 signature."""

SymmetricKey = Annotated[bytes, Fixed(32)]
"""A secretstream (XChaCha20-Poly1305) key."""

Link = Annotated[str, MaxLen(512)]
"""A URL: `file://`, `http://` or `https://`."""

Links = Annotated[tuple[Link, ...], MaxLen(8)]
"""Where a blob may be fetched; every byte is checked against its digest."""

ZERO_HASH = bytes(32)
ZERO_KEY = bytes(32)
ZERO_SIGNATURE = bytes(64)

DICE_SCALE = 1_000_000
"""Dice is carried as an integer in parts per million."""

MODE_NORMAL = 0
"""The block's work is on its selected task, scored on the task's test set (the block carries the test key)."""
MODE_NO_TRAIN_KEY = 1
"""The parent block did not carry the task's training key: the work is on the standing task; part of the escrow is burned."""
MODE_NO_TEST_KEY = 2
"""The training key is on chain but the block carries no test key: scored on the training set; no accuracy weight."""
MODE_STALE = 3
"""The block is not in the slot right after its parent's, so the task's test set may be public: the work is on the
standing task and the escrow is refunded."""
TASK_MODES = (MODE_NORMAL, MODE_NO_TRAIN_KEY, MODE_NO_TEST_KEY, MODE_STALE)
MODE_NAMES = {MODE_NORMAL: "normal", MODE_NO_TRAIN_KEY: "no-train-key", MODE_NO_TEST_KEY: "no-test-key", MODE_STALE: "stale"}
"""Short names of the modes (logs, events, JSON)."""
MODE_DESCRIPTIONS = {
    MODE_NORMAL: "normal",
    MODE_NO_TRAIN_KEY: "no training key on chain (standing task; escrow partly burned)",
    MODE_NO_TEST_KEY: "no test key (scored on the training set)",
    MODE_STALE: "stale: its slot passed (standing task; escrow refunded)",
}
"""What each mode means, for people (CLI, explorer)."""

MAX_CHECKPOINT_HEADER_BYTES = 64 << 10
"""Largest checkpoint header blob (`CheckpointRef.size`): a verifier reads a header before it knows anything else."""
KEY_TRAIN = 0
"""KeyReveal.which for the training-set key."""
KEY_TEST = 1
"""KeyReveal.which for the test-set key."""


class SignedObject:
    """Mixin for signed types: the last field is `signature`."""

    SIGN_KIND: ClassVar[bytes]

    def signing_payload(self) -> bytes:
        """The bytes the signature covers: every field but the signature, encoded."""
        values = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "signature"]
        return encode(values)

    def signer(self) -> bytes:
        """The public key that must have signed this object."""
        raise NotImplementedError

    def is_signature_valid(self) -> bool:
        """True when `signature` is the signer's signature of this object."""
        return is_valid_signature(self.signer(), self.SIGN_KIND, self.signing_payload(), self.signature)

    def signed_by(self, keypair: KeyPair):
        """A copy of this object signed by `keypair`."""
        unsigned = dataclasses.replace(self, signature=ZERO_SIGNATURE)
        return dataclasses.replace(self, signature=keypair.sign(self.SIGN_KIND, unsigned.signing_payload()))


# --- transactions ----------------------------------------------------------


@dataclass(frozen=True)
class Transfer(SignedObject):
    """Move coins from one account to another."""

    TAG: ClassVar[int] = 1
    SIGN_KIND: ClassVar[bytes] = b"transfer"

    sender: PublicKey
    """Account that pays the amount and the fee, and signs."""
    recipient: PublicKey
    """Account that receives the amount."""
    amount: int
    """Coins moved, in base units."""
    fee: int
    """Coins paid to the miner of the block that includes this transaction."""
    nonce: int
    """The sender's account nonce this transaction uses; each nonce is used once, in order."""
    signature: Signature = ZERO_SIGNATURE
    """The sender's signature over all other fields."""

    def signer(self) -> bytes:
        return self.sender


@dataclass(frozen=True)
class BlobRef:
    """An encrypted dataset blob: where it is, what it hashes to, and the commitment to its key."""

    digest: Hash32
    """SHA-256 of the encrypted blob."""
    size: int
    """Size of the encrypted blob in bytes."""
    key_commitment: Hash32
    """pouw.blobcrypt.key_commitment(key); a revealed key must match it."""
    links: Links
    """Where the blob may be fetched (peers that hold it serve it too)."""


@dataclass(frozen=True)
class TaskSubmission(SignedObject):
    """Publish a segmentation task and escrow its reward."""

    TAG: ClassVar[int] = 2
    SIGN_KIND: ClassVar[bytes] = b"task"

    publisher: PublicKey
    """Account that escrows the reward, pays the fee, and signs."""
    reward: int
    """Coins escrowed now and paid to the miner of the verified best model."""
    fee: int
    """Coins paid to the miner of the block that includes this transaction."""
    nonce: int
    """The publisher's account nonce this transaction uses."""
    model: ModelSpec
    """The network to train."""
    train: TrainSpec
    """The training hyperparameters."""
    train_blob: BlobRef
    """The encrypted training set."""
    test_blob: BlobRef
    """The encrypted labelled test set."""
    title: Annotated[str, MaxLen(200)]
    """A short human description of the task."""
    signature: Signature = ZERO_SIGNATURE
    """The publisher's signature over all other fields."""

    def signer(self) -> bytes:
        return self.publisher

    @property
    def task_id(self) -> bytes:
        """The task's id: the hash of the signed submission."""
        return hash_of(self)


@dataclass(frozen=True)
class Bond(SignedObject):
    """Lock coins as the claim bond a miner must hold to have its Phase-2 claims verified."""

    TAG: ClassVar[int] = 3
    SIGN_KIND: ClassVar[bytes] = b"bond"

    miner: PublicKey
    """Account whose coins are locked, and signs."""
    amount: int
    """Coins moved from the balance into the bond."""
    fee: int
    """Coins paid to the miner of the block that includes this transaction."""
    nonce: int
    """The account's nonce this transaction uses."""
    signature: Signature = ZERO_SIGNATURE
    """The miner's signature over all other fields."""

    def signer(self) -> bytes:
        return self.miner


@dataclass(frozen=True)
class Unbond(SignedObject):
    """Start releasing bonded coins; they return to the balance `unbond_delay_blocks` later (amount 0: only release)."""

    TAG: ClassVar[int] = 4
    SIGN_KIND: ClassVar[bytes] = b"unbond"

    miner: PublicKey
    """Account whose bond shrinks, and signs."""
    amount: int
    """Coins moved from the bond to the unbonding balance."""
    fee: int
    """Coins paid to the miner of the block that includes this transaction."""
    nonce: int
    """The account's nonce this transaction uses."""
    signature: Signature = ZERO_SIGNATURE
    """The miner's signature over all other fields."""

    def signer(self) -> bytes:
        return self.miner


Transaction = Union[Transfer, TaskSubmission, Bond, Unbond]
"""Any transaction a block may carry."""


def get_tx_id(tx: Transaction) -> bytes:
    """The id of a transaction: SHA-256 of its tagged canonical encoding."""
    return hash_of(tx)


def get_tx_sender(tx: Transaction) -> bytes:
    """The account that pays for and signs `tx`."""
    return tx.signer()


def get_tx_cost(tx: Transaction) -> int:
    """Coins leaving the sender's balance: amount, reward or bond, plus fee (an Unbond costs its fee only)."""
    if isinstance(tx, Transfer):
        return tx.amount + tx.fee
    if isinstance(tx, TaskSubmission):
        return tx.reward + tx.fee
    if isinstance(tx, Bond):
        return tx.amount + tx.fee
    return tx.fee


# --- phase messages ----------------------------------------------------------


@dataclass(frozen=True)
class KeyReveal:
    """A publisher's dataset key, published at its moment; it proves itself by its commitment."""

    task_id: Hash32
    """The task whose blob the key opens."""
    which: int
    """KEY_TRAIN or KEY_TEST."""
    key: SymmetricKey
    """The secretstream key; must match the blob's key_commitment."""


@dataclass(frozen=True)
class Commit(SignedObject):
    """Phase-1 commitment to a model, bound to its miner so a seen model cannot be re-claimed."""

    SIGN_KIND: ClassVar[bytes] = b"commit"

    height: int
    """The block height the model competes for."""
    slot: int
    """The block interval (slot) the commit was made in."""
    task_id: Hash32
    """The task the model was trained on (the standing task's id in MODE_NO_TRAIN_KEY)."""
    miner: PublicKey
    """The miner's key; the commit binding includes it."""
    binding: Hash32
    """compute_commit_binding(model_digest, miner) = SHA-256(model_digest || miner)."""
    trajectory_root: Hash32
    """compute_trajectory_root of the claim's checkpoints: the whole training path is fixed before any key that picks what is replayed."""
    signature: Signature = ZERO_SIGNATURE
    """The miner's signature over all other fields."""

    def signer(self) -> bytes:
        return self.miner


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint of a training trajectory, as a claim declares it (a leaf of the trajectory root)."""

    digest: Hash32
    """SHA-256 of the checkpoint's header blob (which names its weights and optimizer-state shard blobs)."""
    size: int
    """Size of the header blob in bytes (fetches stop past it)."""
    parts_size: int
    """Bytes of the blobs the header names: the weights and every optimizer-state shard."""
    update_norm: int
    """L2 norm of the weight update of the segment this checkpoint ends, in millionths (0 for checkpoint 0)."""


@dataclass(frozen=True)
class WorkProof:
    """What a full node needs to verify a model: digests, links, checkpoints and the claimed Dice."""

    model_digest: Hash32
    """SHA-256 of the final model file."""
    model_size: int
    """Size of the final model file in bytes."""
    checkpoints: Annotated[tuple[CheckpointRef, ...], MaxLen(4096)]
    """The trajectory's checkpoints in training order: checkpoint 0 (the seed's initial weights), then one per segment."""
    links: Links
    """Base URLs of blob servers holding the model and checkpoints (`<link>/blob/<hex digest>`)."""
    dice_ppm: int
    """The claimed Dice on the scoring set, in parts per million."""

    @property
    def checkpoint_digests(self) -> tuple[bytes, ...]:
        """The checkpoints' digests, in order."""
        return tuple(c.digest for c in self.checkpoints)


# --- blocks ------------------------------------------------------------------


@dataclass(frozen=True)
class BlockHeader(SignedObject):
    """The header: classic fields plus the selected task, the unfinished-task root and the work signature."""

    SIGN_KIND: ClassVar[bytes] = b"header"

    height: int
    """Blocks since genesis (genesis is 0)."""
    slot: int
    """The block interval this block was mined in; strictly above the parent's."""
    prev_hash: Hash32
    """Hash of the parent block's header."""
    body_root: Hash32
    """compute_body_root(body): Merkle root over the body's parts."""
    timestamp: int
    """Unix seconds when the block was made; inside Phase 2 of `slot`."""
    size: int
    """Length of the encoded body in bytes."""
    task_id: Hash32
    """The task selected for this height (from the state two blocks back)."""
    task_mode: int
    """MODE_NORMAL, MODE_NO_TRAIN_KEY, MODE_NO_TEST_KEY or MODE_STALE: decided by the chain (docs/protocol.md §5)."""
    unselected_root: Hash32
    """Merkle root of the unfinished tasks (waiting and scheduled) after this block."""
    miner: PublicKey
    """The winning miner; receives the block reward, the task's escrow and the fees."""
    dice_ppm: int
    """The verified Dice of the block's model, in parts per million."""
    work_signature: Signature
    """The miner's signature over (model digest, training data digest, task id, dice)."""
    signature: Signature = ZERO_SIGNATURE
    """The miner's signature over all other header fields."""

    def signer(self) -> bytes:
        return self.miner

    @property
    def hash(self) -> bytes:
        """The block hash: SHA-256 of the encoded header."""
        return hash_of(self)


@dataclass(frozen=True)
class BlockBody:
    """Transactions, the key reveals of the block's task, the winning commit and its work."""

    transactions: Annotated[tuple[Transaction, ...], MaxLen(100_000)]
    """Transactions in the order they are applied."""
    key_reveals: Annotated[tuple[KeyReveal, ...], MaxLen(2)]
    """The keys due in this block's slot: its own task's test key (MODE_NORMAL), then the next height's training key."""
    commit: Commit | None
    """The winner's Phase-1 commit (None only in genesis)."""
    work: WorkProof | None
    """The winner's model, checkpoints and claimed Dice (None only in genesis)."""
    evidence: Annotated[tuple["ClaimEvidence", ...], MaxLen(16)] = ()
    """Claims of recent heights that ranked above the block that won them: their claimants' bonds are forfeited."""


@dataclass(frozen=True)
class ClaimEvidence:
    """A claim shown false by the chain itself: it ranked above the block that won its height, so it failed verification.

    It carries what its block's body root commits to, without the
    transactions (their Merkle root stands in for them), so its header's
    signature and body root can be checked without any blob.
    """

    header: "BlockHeader"
    """The claimed block's header, signed by the claimant."""
    commit: Commit
    """Its Phase-1 commit."""
    work: WorkProof
    """Its work proof (claimed Dice, model, checkpoints)."""
    key_reveals: Annotated[tuple[KeyReveal, ...], MaxLen(2)]
    """Its key reveals."""
    transactions_root: Hash32
    """Merkle root of its transactions."""
    evidence_root: Hash32
    """Merkle root of its own evidence list."""


@dataclass(frozen=True)
class Block:
    """A header and its body."""

    header: BlockHeader
    """The signed header."""
    body: BlockBody
    """The body the header's body_root and size commit to."""

    @property
    def hash(self) -> bytes:
        """The block hash (of the header)."""
        return self.header.hash


@dataclass(frozen=True)
class Claim:
    """A Phase-2 claim: a complete block candidate whose header names the claimed Dice."""

    block: Block
    """The candidate block; its work proof carries model and checkpoint digests and links."""


# --- chain parameters ----------------------------------------------------------


@dataclass(frozen=True)
class StandingTask:
    """The task mined when none waits: synthetic images generated from chain randomness."""

    model: ModelSpec
    """The network to train."""
    train: TrainSpec
    """The training hyperparameters."""
    train_count: int
    """Number of synthetic training images per block."""
    test_count: int
    """Number of synthetic test images per block."""

    @property
    def task_id(self) -> bytes:
        """The standing task's id."""
        return hash_of(self)


@dataclass(frozen=True)
class Allocation:
    """A genesis balance."""

    address: PublicKey
    """The funded account."""
    amount: int
    """Its starting balance."""


@dataclass(frozen=True)
class ChainParams:
    """Everything that defines a network; its hash names the chain."""

    name: Annotated[str, MaxLen(64)]
    """Human name of the network (e.g. "devnet", "main")."""
    genesis_time: int
    """Unix seconds at which slot 0 starts."""
    phase1_seconds: int
    """Length of Phase 1 (training, commits)."""
    phase2_seconds: int
    """Length of Phase 2 (evaluation, claims, verification)."""
    clock_skew_seconds: int
    """Largest clock difference between honest nodes tolerated at phase boundaries."""
    key_grace_seconds: int
    """How long after a phase starts its key may still arrive before the fallback applies."""
    block_reward: int
    """New coins paid to each block's miner."""
    max_block_size: int
    """Largest encoded body, in bytes."""
    max_block_transactions: int
    """Most transactions in one block."""
    max_unselected_tasks: int
    """Most tasks waiting at once; a submission beyond it is invalid."""
    min_task_reward: int
    """Smallest reward a task may escrow."""
    high_accuracy_ppm: int
    """Dice (ppm) from which a block's model counts as high-accuracy for fork choice and confirmations."""
    task_maturity_blocks: int
    """Blocks a task waits after the block that includes it before it may be selected (M)."""
    finality_depth: int
    """The deepest reorganisation a node makes on its own (R < M); deeper splits need an operator."""
    dice_tolerance_ppm: int
    """Largest difference between a claimed and a recomputed Dice that is accepted."""
    replay_top_q: int
    """Segments with the largest declared weight updates a verifier replays (Proof-of-Learning's top-Q)."""
    replay_random: int
    """Further segments a verifier replays, drawn from keys revealed after the commit."""
    claim_bond_base: int
    """Bond (base units) a miner must hold for its claim to be verified, before the size term."""
    claim_bond_per_mib: int
    """Bond (base units) per MiB a verifier fetches for the claim (model and replayed checkpoints)."""
    evidence_window_blocks: int
    """Blocks after a height during which a false claim for it can be shown (and its bond forfeited)."""
    unbond_delay_blocks: int
    """Blocks before unbonded coins return to the balance (longer than the evidence window)."""
    standing_task: StandingTask
    """The task mined when no task waits."""
    allocations: Annotated[tuple[Allocation, ...], MaxLen(10_000)]
    """Genesis balances."""

    @property
    def chain_id(self) -> bytes:
        """The id of the network: hash of its parameters."""
        return hash_of(self)

    @property
    def slot_seconds(self) -> int:
        """Length of one block interval."""
        return self.phase1_seconds + self.phase2_seconds


# --- chain state records -------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """An account's balance and next nonce."""

    balance: int
    """Spendable coins."""
    nonce: int
    """The nonce the account's next transaction must use."""
    bonded: int = 0
    """Coins locked as claim bond (forfeited when the account's claim is proven false)."""
    unbonding: int = 0
    """Coins leaving the bond; still forfeitable until released."""
    unbond_height: int = 0
    """Height from which `unbonding` may be released (by an Unbond of any amount)."""


EMPTY_ACCOUNT = Account(0, 0)


@dataclass(frozen=True)
class TaskRecord:
    """A task known to the chain state, with its escrow."""

    submission: TaskSubmission
    """The task as submitted."""
    escrow: int
    """Coins held for the winner."""
    submitted_height: int
    """Height of the block that included the submission."""
    selected_height: int
    """Height the task was scheduled for; 0 while it waits."""


@dataclass(frozen=True)
class QueueEntry:
    """One unfinished task in the order of selection."""

    reward: int
    """The task's reward (higher is selected first)."""
    task_id: Hash32
    """The task's id (lower wins ties)."""


@dataclass(frozen=True)
class ScheduledTask:
    """A task already selected for a future height."""

    height: int
    """The height it will be mined at."""
    task_id: Hash32
    """The selected task (the standing task's id when none waited)."""


@dataclass(frozen=True)
class ChainStatus:
    """The singleton record of where the state stands."""

    height: int
    """Height of the last applied block."""
    tip_hash: Hash32
    """Hash of the last applied block."""
    min_slot: int
    """Smallest slot the next block may use (one above the tip's; 0 after genesis)."""
    scheduled: Annotated[tuple[ScheduledTask, ...], MaxLen(2)]
    """Tasks of the next two heights."""
    train_key: Annotated[bytes, MaxLen(32)]
    """The training key of the next height's task, as the tip block carried it (empty if it did not)."""
    unselected: Annotated[tuple[QueueEntry, ...], MaxLen(1_000_000)]
    """Waiting tasks, best first (reward descending, then task id ascending)."""
    supply: int
    """Coins in existence (balances plus escrows)."""


@dataclass(frozen=True)
class HistoryEntry:
    """What one block did with its task."""

    height: int
    """The block's height."""
    block_hash: Hash32
    """The block's hash."""
    task_id: Hash32
    """The selected task."""
    task_mode: int
    """How the task was mined (MODE_*)."""
    winner: PublicKey
    """The miner paid."""
    dice_ppm: int
    """The winning Dice."""
    model_digest: Hash32
    """The winning model."""
    paid: int
    """Block reward + escrow paid + fees."""
    slot: int = 0
    """The block's slot."""
    carried_next_key: bool = False
    """True when the block carried the next height's training key."""
