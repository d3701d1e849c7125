"""Messages full nodes exchange besides gossip: status and block sync."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from consensus.forkchoice import ChainScore
from pouw.encoding import Hash32, MaxLen

STATUS_PROTOCOL = "/pouw/req/status/1"
BLOCKS_PROTOCOL = "/pouw/req/blocks/1"
MAX_SYNC_BLOCKS = 64
"""Most blocks one sync response carries."""
MAX_SYNC_RESPONSE = 24 * 1024 * 1024
"""Largest sync response, in bytes."""
MAX_LOCATOR = 64
"""Most hashes in a block locator."""

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
