"""Messages full nodes exchange: the gossip form of claims and blocks, status, block sync and block bodies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Union

from consensus.forkchoice import ChainScore
from pouw.encoding import Hash32, MaxLen
from pouw.types import Block, BlockHeader

STATUS_PROTOCOL = "/pouw/req/status/1"
BLOCKS_PROTOCOL = "/pouw/req/blocks/1"
HEADERS_PROTOCOL = "/pouw/req/headers/1"
BODY_PROTOCOL = "/pouw/req/body/1"
MAX_SYNC_BLOCKS = 64
"""Most blocks one sync response carries."""
MAX_SYNC_RESPONSE = 24 * 1024 * 1024
"""Largest sync response, in bytes."""
MAX_LOCATOR = 64
"""Most hashes in a block locator."""
MAX_HEADERS = 2000
"""Most headers one headers response carries."""
MAX_HEADERS_RESPONSE = 2 * 1024 * 1024
"""Largest headers response, in bytes."""

MAX_STATUS_MESSAGE = 4096
"""Largest status answer, in bytes."""
MAX_BODY_REQUEST = 64
"""Largest body request, in bytes (a 32-byte hash and its framing)."""
MAX_ANNOUNCEMENT = 4096
"""Largest header announcement on the claim and block topics, in bytes."""
MAX_HEADER_ROOM = 4096
"""Bytes a block's encoding may take besides its body (the header and the framing): a block is at most
`max_block_size` plus this."""

GOSSIP_NAMES = ("tx", "commit", "claim", "key", "block")
TOPIC_VERSIONS = {"tx": 1, "commit": 1, "claim": 2, "key": 1, "block": 2}
"""Version of each topic's payload (claim and block: 2, since they carry a BlockMessage)."""


def get_topic(chain_id: bytes, name: str) -> str:
    """The gossip topic `name` of the network `chain_id`."""
    if name not in GOSSIP_NAMES:
        raise ValueError(f"unknown topic {name}")
    return f"/pouw/{chain_id[:8].hex()}/{name}/{TOPIC_VERSIONS[name]}"


@dataclass(frozen=True)
class FullBlock:
    """A claim or block small enough for a gossip frame, whole."""

    TAG: ClassVar[int] = 1

    block: Block
    """The block (on the claim topic: the claimed block candidate)."""


@dataclass(frozen=True)
class HeaderAnnouncement:
    """A claim or block too large for a gossip frame: its header; the body is fetched from the forwarder."""

    TAG: ClassVar[int] = 2

    header: BlockHeader
    """The signed header; its `size` is the body's length and its `body_root` commits to the body."""


BlockMessage = Union[FullBlock, HeaderAnnouncement]
"""The payload of the claim and block topics (tagged: [1, [block]] or [2, [header]])."""


@dataclass(frozen=True)
class BodyRequest:
    """Ask a peer for the body of a block or claim it announced."""

    block_hash: Hash32
    """The hash of the header the body belongs to."""


@dataclass(frozen=True)
class StatusMessage:
    """A node's answer to a status request."""

    chain_id: Hash32
    """The network it follows."""
    height: int
    """Its tip's height."""
    tip_hash: Hash32
    """Its tip."""
    score: ChainScore
    """Its tip's fork-choice score."""
    blob_url: Annotated[str, MaxLen(256)]
    """Where it serves blobs over HTTP ("" if it does not)."""


@dataclass(frozen=True)
class BlocksRequest:
    """Ask for best-chain blocks after the first locator hash the peer knows."""

    locator: Annotated[tuple[Hash32, ...], MaxLen(MAX_LOCATOR)]
    """Our best chain's hashes, newest first: tip, tip−1, tip−3, tip−7, … (steps doubling), ending with genesis."""
    max_blocks: int
    """Most blocks wanted."""


@dataclass(frozen=True)
class BlocksResponse:
    """Encoded blocks, parents first."""

    blocks: Annotated[tuple[bytes, ...], MaxLen(MAX_SYNC_BLOCKS)]
    """Each a canonical Block encoding."""


@dataclass(frozen=True)
class HeadersResponse:
    """Best-chain headers after the first locator hash the peer knows, parents first (for assume-valid)."""

    headers: Annotated[tuple[BlockHeader, ...], MaxLen(MAX_HEADERS)]
    """Each a block header."""
