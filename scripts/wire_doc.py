"""Print the wire-type tables of docs/network.md from the dataclasses themselves.

    python scripts/wire_doc.py            # print the tables
    python scripts/wire_doc.py --write    # replace them in docs/network.md

tests/test_docs.py fails when the doc and the code disagree.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from consensus.forkchoice import ChainScore  # noqa: E402
from fullnode.messages import (  # noqa: E402
    BlocksRequest, BlocksResponse, BodyRequest, FullBlock, HeaderAnnouncement, HeadersResponse, StatusMessage,
)
from pouw.encoding import Fixed, MaxLen  # noqa: E402
from pouw.seg.spec import ModelSpec, TrainSpec  # noqa: E402
from pouw.types import (  # noqa: E402
    BlobRef, Block, BlockBody, BlockHeader, Bond, CheckpointRef, Claim, ClaimEvidence, Commit, KeyReveal, TaskSubmission,
    Transfer, Unbond, WorkProof,
)

WIRE_TYPES = (
    Transfer, TaskSubmission, Bond, Unbond, ModelSpec, TrainSpec, BlobRef, Commit, KeyReveal, CheckpointRef, WorkProof,
    BlockHeader, BlockBody, ClaimEvidence, Block, Claim, FullBlock, HeaderAnnouncement, StatusMessage, ChainScore,
    BlocksRequest, BlocksResponse, HeadersResponse, BodyRequest,
)
TAGGED_KINDS = {FullBlock: "block message", HeaderAnnouncement: "block message"}
"""Tagged types that are not transactions: what their tag is a tag of."""
BEGIN = "<!-- wire-types:begin (scripts/wire_doc.py --write) -->"
END = "<!-- wire-types:end -->"


def describe(tp) -> str:
    """A type in the doc's notation: uint64, float64, bytes[32], str≤200, [T]≤N, T | nil."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *extras = typing.get_args(tp)
        for extra in extras:
            if isinstance(extra, Fixed):
                return f"bytes[{extra.length}]"
            if isinstance(extra, MaxLen):
                return f"{describe(base)}≤{extra.length}"
        return describe(base)
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"[{describe(typing.get_args(tp)[0])}]"
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args:
            return " | ".join(describe(a) for a in args if a is not type(None)) + " | nil"
        return "tagged " + " or ".join(describe(a) for a in args)
    return {int: "uint64", float: "float64", bytes: "bytes", str: "str"}.get(tp, getattr(tp, "__name__", str(tp)))


def render() -> str:
    """The tables, one per wire type, fields in encoding order."""
    out = [BEGIN]
    for cls in WIRE_TYPES:
        hints = typing.get_type_hints(cls, include_extras=True)
        tag = f" ({TAGGED_KINDS.get(cls, 'transaction')} tag {cls.TAG})" if hasattr(cls, "TAG") else ""
        out += ["", f"**{cls.__name__}**{tag}: {cls.__doc__.splitlines()[0]}", "", "| # | field | type |", "|---|---|---|"]
        for i, field in enumerate(dataclasses.fields(cls)):
            out.append(f"| {i} | `{field.name}` | {describe(hints[field.name])} |")
    out.append("")
    out.append(END)
    return "\n".join(out)


def main() -> None:
    text = render()
    if "--write" not in sys.argv:
        print(text)
        return
    doc = ROOT / "docs" / "network.md"
    current = doc.read_text()
    start, end = current.index(BEGIN), current.index(END) + len(END)
    doc.write_text(current[:start] + text + current[end:])


if __name__ == "__main__":
    main()
