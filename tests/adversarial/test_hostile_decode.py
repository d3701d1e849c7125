"""Attack: make a node spend memory and CPU on a message before it is refused.

Before, `decode` unpacked the whole msgpack message and only then compared it
with the type: a 23 MiB sync response of a million-item arrays of empty
arrays cost +1.5 GB and seconds before its first field was looked at. Now each
header is checked against the type first; these tests send the hostile
shapes at the real wire types and measure the peak memory of refusing them.
"""

from __future__ import annotations

import struct
import tracemalloc
from dataclasses import dataclass
from typing import Annotated

import pytest

from pouw.encoding import DecodeError, Fixed, MaxLen, decode, encode
from pouw.types import Block, BlockHeader, TaskSubmission, Transaction

MiB = 1 << 20
# Refusing must cost no more than a small constant, whatever the size of the message.
REFUSAL_BUDGET = 256 * 1024


def array32(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def refusal_peak(cls, data: bytes, match: str) -> int:
    """Peak bytes allocated while `decode(cls, data)` refuses `data` (DecodeError matching `match`)."""
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match=match):
            decode(cls, data, max_size=len(data))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def empty_arrays(count: int, per: int = MiB) -> bytes:
    """`count` arrays of `per` empty arrays each: a list object per byte once unpacked."""
    return (array32(per) + b"\x90" * per) * count


@dataclass(frozen=True)
class Batch:
    """A wire-like message: a bounded list of byte strings."""

    items: Annotated[tuple[bytes, ...], MaxLen(64)]
    """Payloads."""


@pytest.mark.parametrize("cls", [Block, BlockHeader, Transaction, TaskSubmission])
def test_arrays_of_empty_arrays_are_refused_at_the_first_header(cls):
    # 4 MiB (the block size limit) of [[], [], ...] where a dataclass is expected.
    data = b"\x92" + empty_arrays(4)
    assert refusal_peak(cls, data, "expected") < REFUSAL_BUDGET


def test_a_bounded_list_refuses_a_longer_header_before_reading_items():
    # 65 items announced for MaxLen(64): refused at the header although the items are all there.
    data = b"\x91\xdc" + struct.pack(">H", 65) + encode(b"x") * 65
    with pytest.raises(DecodeError, match="Batch.items: length 65 exceeds 64"):
        decode(Batch, data)
    # Items that are not byte strings: refused at the first one, nothing behind it is unpacked.
    data = b"\x91\x92" + empty_arrays(2)
    assert refusal_peak(Batch, data, r"items\[0\]: expected bytes, got list") < REFUSAL_BUDGET


def test_a_huge_list_header_is_refused_without_allocating():
    data = b"\x91" + array32(24 * MiB) + b"\x00" * (24 * MiB)
    assert refusal_peak(Batch, data, "length 25165824 exceeds 64") < REFUSAL_BUDGET


def test_deep_nesting_is_refused_at_the_depth_of_the_type():
    data = b"\x91" * (4 * MiB) + b"\x90"
    assert refusal_peak(Block, data, "expected") < REFUSAL_BUDGET
    assert refusal_peak(Batch, data, r"items\[0\]: expected bytes, got list") < REFUSAL_BUDGET


def test_byte_and_string_lengths_are_checked_at_the_header():
    @dataclass(frozen=True)
    class Keyed:
        key: Annotated[bytes, Fixed(32)]
        """A digest."""
        name: Annotated[str, MaxLen(8)]
        """A short name."""

    # A 1 GiB byte string announced where 32 bytes go; only the header is sent.
    with pytest.raises(DecodeError, match="Keyed.key: expected 32 bytes, got 1073741824"):
        decode(Keyed, b"\x92\xc6" + struct.pack(">I", 1 << 30))
    # A string can hold at most 4 bytes per allowed character.
    with pytest.raises(DecodeError, match="Keyed.name: string of 33 bytes exceeds 8 characters"):
        decode(Keyed, b"\x92" + encode(b"k" * 32) + b"\xd9\x21")
    # The limit counts characters, as before: 8 three-byte characters pass, 9 do not.
    assert decode(Keyed, encode([b"k" * 32, "€" * 8])).name == "€" * 8
    with pytest.raises(DecodeError, match="length 9 exceeds 8"):
        decode(Keyed, encode([b"k" * 32, "€" * 9]))


def test_an_array_count_the_message_cannot_hold_is_refused():
    data = b"\x91" + array32(1_000_000) + b"\xc4\x00" * 10
    with pytest.raises(DecodeError, match="array of 1000000 items in 20 remaining bytes"):
        decode(Batch, data)


def test_maps_and_extensions_never_decode():
    with pytest.raises(DecodeError, match="expected array of 1 fields, got map"):
        decode(Batch, b"\x81\x00\x00")
    with pytest.raises(DecodeError, match=r"items\[0\]: expected bytes, got extension"):
        decode(Batch, b"\x91\x91\xd4\x01\x00")
