"""pouw networking: a py-libp2p host with gossip, framed request/response and peer bans."""

from .framing import FrameError, FrameTooLarge, P2PError, RemoteError, StreamClosed
from .node import (
    GossipConfig,
    MessageTooLarge,
    P2PNode,
    PeerBanned,
    RequestRejected,
    RequestTimeout,
    ScoreConfig,
    Verdict,
    as_peer_id,
)

__all__ = [
    "FrameError",
    "FrameTooLarge",
    "GossipConfig",
    "MessageTooLarge",
    "P2PError",
    "P2PNode",
    "PeerBanned",
    "RemoteError",
    "RequestRejected",
    "RequestTimeout",
    "ScoreConfig",
    "StreamClosed",
    "Verdict",
    "as_peer_id",
]
