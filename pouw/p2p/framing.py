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

from libp2p.network.stream.exceptions import StreamEOF
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


class StreamClosed(FrameError):
    """The stream ended cleanly between frames (no byte of a next frame arrived)."""


class RemoteError(P2PError):
    """The peer answered a request with an error frame."""


# Bytes asked of the muxer per read: every read of a yamux stream sends a
# window update, so few large reads beat many small ones (a 1-byte varint
# read used to cost a whole frame on the wire).
READ_SIZE = 256 * 1024


def encode_frame(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


def _parse_uvarint(buf: bytes | bytearray) -> tuple[int, int] | None:
    """(value, bytes used) of the uvarint at the start of `buf`, or None if it is not complete yet."""
    value = 0
    for i in range(min(len(buf), _MAX_VARINT_BYTES)):
        byte = buf[i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    if len(buf) >= _MAX_VARINT_BYTES:
        raise FrameError("malformed length prefix (varint longer than 10 bytes)")
    return None


class FrameReader:
    """Reads frames from one stream in large reads, keeping what follows a frame for the next one.

    The length prefix is checked against the caller's limit before any byte
    of the body is read; the body is gathered as it arrives (never more than
    the announced length is kept for it) and joined once.
    """

    def __init__(self, stream):
        self.stream = stream
        self.bytes_read = 0
        """Bytes received on the stream so far."""
        self._pending = b""

    async def _read(self, n: int) -> bytes:
        try:
            data = await self.stream.read(n)
        except StreamEOF as exc:
            if not self._pending:
                raise StreamClosed("stream ended") from exc
            raise FrameError("stream ended while reading a frame") from exc
        except Exception as exc:  # StreamReset, StreamError ...
            raise FrameError(f"stream failed while reading a frame ({type(exc).__name__})") from exc
        self.bytes_read += len(data)
        if not data:
            if not self._pending:
                raise StreamClosed("stream ended")
            raise FrameError("stream ended while reading a frame")
        return data

    async def read_frame(self, max_size: int) -> bytes:
        """The next frame's payload; FrameTooLarge before its body when the prefix announces more than `max_size`."""
        while (parsed := _parse_uvarint(self._pending)) is None:
            self._pending += await self._read(READ_SIZE)
        length, used = parsed
        if length > max_size:
            raise FrameTooLarge(length, max_size)
        have = self._pending[used:]
        chunks = [have]
        got = len(have)
        while got < length:
            try:
                data = await self._read(max(READ_SIZE, length - got))
            except StreamClosed:
                raise FrameError("stream ended while reading a frame") from None
            chunks.append(data)
            got += len(data)
        joined = b"".join(chunks) if len(chunks) > 1 else have
        self._pending = joined[length:]
        return joined[:length]


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
    chunks = []
    got = 0
    while got < length:
        data = await _read_some(stream, length - got)
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def ok_frame(payload: bytes) -> bytes:
    # One copy of the payload, not two (status byte, then prefix).
    return b"".join((encode_uvarint(len(payload) + 1), bytes([STATUS_OK]), payload))


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
