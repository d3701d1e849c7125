"""The docs say what the code does: the wire types of docs/network.md are generated from the dataclasses."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_wire_doc():
    spec = importlib.util.spec_from_file_location("wire_doc", ROOT / "scripts" / "wire_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_network_doc_lists_every_wire_field_in_order():
    wire_doc = load_wire_doc()
    doc = (ROOT / "docs" / "network.md").read_text()
    assert wire_doc.render() in doc, "docs/network.md is stale: run python scripts/wire_doc.py --write"


def test_network_doc_names_the_topics_and_protocols_the_code_uses():
    from fullnode.messages import BLOCKS_PROTOCOL, GOSSIP_NAMES, STATUS_PROTOCOL, get_topic

    doc = (ROOT / "docs" / "network.md").read_text()
    assert get_topic(b"\x3f\xa1\xc0\xde\x5b\x7e\x9a\x12" + bytes(24), "block") in doc
    for name in GOSSIP_NAMES:
        assert f"| `{name}` |" in doc
    for protocol in (STATUS_PROTOCOL, BLOCKS_PROTOCOL):
        assert f"`{protocol}`" in doc
