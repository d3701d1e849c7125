"""Messages full nodes exchange besides gossip: status and block sync."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from consensus.forkchoice import ChainScore
from pouw.encoding import Hash32, MaxLen
from pouw.types import BlockHeader

STATUS_PROTOCOL = "/pouw/req/status/1"
BLOCKS_PROTOCOL = "/pouw/req/blocks/1"
HEADERS_PROTOCOL = "/pouw/req/headers/1"
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

GOSSIP_NAMES = ("tx", "commit", "claim", "key", "block")


def get_topic(chain_id: bytes, name: str) -> str:
    """The gossip topic `name` of the network `chain_id`."""
    if name not in GOSSIP_NAMES:
        raise ValueError(f"unknown topic {name}")
    return f"/pouw/{chain_id[:8].hex()}/{name}/1"


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
