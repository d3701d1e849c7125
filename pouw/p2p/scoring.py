"""Local peer scores and bans, safe to change from any thread.

Scores start at 0, penalties subtract, and a score recovers toward 0 with
time; at or below the ban threshold the peer is banned. The book only
records: P2PNode applies what a ban means on the network (disconnect, drop
gossip) in its own event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from libp2p.peer.id import ID

log = logging.getLogger("pouw.p2p")


@dataclass(frozen=True)
class ScoreConfig:
    """How penalties add up to a ban."""

    invalid_gossip_penalty: float = 20.0
    """Points for a gossip message a validator rejects."""
    oversize_frame_penalty: float = 20.0
    """Points for a request or response frame over the protocol's limit."""
    default_penalty: float = 10.0
    """Points of a penalty given without a number."""
    ban_threshold: float = -100.0
    """At or below this score the peer is banned."""
    ban_seconds: float = 600.0
    """Length of a ban earned by the score."""
    recovery_per_second: float = 0.1
    """Points a negative score regains per second, up to 0."""


@dataclass
class _PeerScore:
    score: float = 0.0
    updated: float = field(default_factory=time.monotonic)
    reasons: list[str] = field(default_factory=list)


class PeerBook:
    """Scores and bans by peer id; every method may be called from any thread."""

    def __init__(self, config: ScoreConfig, me: ID, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._me = me
        self._clock = clock
        self._lock = threading.Lock()
        self._scores: dict[ID, _PeerScore] = {}
        self._bans: dict[ID, tuple[float, str]] = {}

    def _recover(self, st: _PeerScore, now: float) -> None:
        st.score = min(0.0, st.score + (now - st.updated) * self.config.recovery_per_second)
        st.updated = now

    def score(self, peer: ID) -> float:
        with self._lock:
            st = self._scores.get(peer)
            if st is None:
                return 0.0
            self._recover(st, self._clock())
            return st.score

    def penalize(self, peer: ID, points: float, reason: str) -> tuple[float, bool]:
        """Subtract `points`; returns (new score, whether this penalty started a ban)."""
        if peer == self._me:
            return 0.0, False
        with self._lock:
            now = self._clock()
            st = self._scores.setdefault(peer, _PeerScore(updated=now))
            self._recover(st, now)
            st.score -= abs(points)
            st.reasons = (st.reasons + [reason])[-10:]
            score = st.score
            banned = self._is_banned_locked(peer, now)
        log.info("peer %s penalized %.0f (%s); score %.1f", peer, points, reason, score)
        if score <= self.config.ban_threshold and not banned:
            self.ban(peer, self.config.ban_seconds, f"score {score:.0f}: {reason}")
            return score, True
        return score, False

    def ban(self, peer: ID, seconds: float, reason: str) -> bool:
        """Ban until now + `seconds` (a longer ban in force is kept); False for ourselves."""
        if peer == self._me:
            return False
        with self._lock:
            until = self._clock() + float(seconds)
            prev = self._bans.get(peer)
            if prev is None or prev[0] < until:
                self._bans[peer] = (until, reason)
        log.warning("banning peer %s for %.0f s: %s", peer, seconds, reason)
        return True

    def unban(self, peer: ID) -> bool:
        """Lift a ban and reset the score; True if a ban was lifted."""
        with self._lock:
            lifted = self._bans.pop(peer, None) is not None
            st = self._scores.get(peer)
            if st is not None:
                st.score = 0.0
        return lifted

    def _is_banned_locked(self, peer: ID, now: float) -> bool:
        entry = self._bans.get(peer)
        return entry is not None and entry[0] > now

    def is_banned(self, peer: ID) -> bool:
        # A dict read is atomic; no lock on the hot path (every stream and message).
        entry = self._bans.get(peer)
        return entry is not None and entry[0] > self._clock()

    def bans(self) -> dict[str, dict]:
        with self._lock:
            now = self._clock()
            return {
                str(p): {"seconds_left": round(until - now, 1), "reason": reason}
                for p, (until, reason) in self._bans.items()
                if until > now
            }

    def expire(self) -> list[ID]:
        """Drop bans that have run out; returns their peers."""
        with self._lock:
            now = self._clock()
            gone = [p for p, (until, _r) in self._bans.items() if until <= now]
            for p in gone:
                del self._bans[p]
        for p in gone:
            log.info("ban on peer %s expired", p)
        return gone
