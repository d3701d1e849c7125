"""Length-prefixed frames on libp2p streams.

Every message on a pouw stream is ``uvarint(len) || payload``. We frame
instead of relying on end-of-stream because a py-libp2p reader did not see
EOF after the writer's close() in our trial (DESIGN.md).

A response frame carries one status byte first, so that a server can tell
the client *why* it refused a request instead of just resetting the stream:

    0x00 || payload          success
    0x01 || utf-8 message    error (request refused or handler failed)
"""

from __future__ import annotations

from libp2p.utils.varint import encode_uvarint

STATUS_OK = 0
STATUS_ERROR = 1

# A uvarint of a 64-bit value is at most 10 bytes.
_MAX_VARINT_BYTES = 10


class P2PError(Exception):
    """Base class of pouw network errors."""


class FrameError(P2PError):
    """A frame was malformed, truncated or larger than the protocol allows."""


class FrameTooLarge(FrameError):
    """The length prefix announced more bytes than the protocol's limit."""

    def __init__(self, announced: int, limit: int):
        super().__init__(f"frame of {announced} bytes exceeds the limit of {limit} bytes")
        self.announced = announced
        self.limit = limit


class RemoteError(P2PError):
    """The peer answered a request with an error frame."""


def encode_frame(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


async def write_frame(stream, payload: bytes) -> None:
    # One write call: the prefix and payload leave in the same muxer frame
    # for small messages.
    await stream.write(encode_frame(payload))


async def _read_some(stream, n: int) -> bytes:
    try:
        data = await stream.read(n)
    except Exception as exc:  # StreamEOF, StreamReset, StreamError ...
        raise FrameError(f"stream ended while reading a frame ({type(exc).__name__})") from exc
    if not data:
        raise FrameError("stream ended while reading a frame")
    return data


async def read_frame(stream, max_size: int) -> bytes:
    """Read one frame; reject it before reading the body if it is too big."""
    length = 0
    for i in range(_MAX_VARINT_BYTES):
        byte = (await _read_some(stream, 1))[0]
        length |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            break
    else:
        raise FrameError("malformed length prefix (varint longer than 10 bytes)")
    if length > max_size:
        raise FrameTooLarge(length, max_size)
    buf = bytearray()
    while len(buf) < length:
        buf += await _read_some(stream, length - len(buf))
    return bytes(buf)


def ok_frame(payload: bytes) -> bytes:
    return encode_frame(bytes([STATUS_OK]) + payload)


def error_frame(message: str) -> bytes:
    return encode_frame(bytes([STATUS_ERROR]) + message.encode("utf-8", "replace")[:4096])


def parse_response(frame: bytes) -> bytes:
    """Return the payload of a response frame or raise RemoteError."""
    if not frame:
        raise FrameError("empty response frame (no status byte)")
    status, payload = frame[0], frame[1:]
    if status == STATUS_OK:
        return payload
    if status == STATUS_ERROR:
        raise RemoteError(payload.decode("utf-8", "replace"))
    raise FrameError(f"unknown response status byte {status}")
