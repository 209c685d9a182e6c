"""Link emulation without root: which settings are refused and why, the delayer's netlink
messages, the nft rules of a link node, and the statistics the link bench and test rely on."""
from __future__ import annotations

import struct

import pytest

from topology import linkcheck as lc
from topology import linkdelay as ld
from topology.impair import LinkShape, _nft_table
from topology.rack import worker_plan


@pytest.mark.parametrize("shape, words", [
    (LinkShape(delay_ms=2, jitter_ms=3), "exceeds --delay"),
    (LinkShape(jitter_ms=1), "exceeds --delay"),
    (LinkShape(reorder_pct=5), "--reorder needs --delay"),
    (LinkShape(bw_mbit=10000, delay_ms=100), "delay queue holds"),
    (LinkShape(loss_pct=100), "percentage"),
])
def test_settings_that_cannot_be_emulated_are_refused_in_one_line(shape, words):
    with pytest.raises(ValueError, match=words) as e:
        shape.validate()
    assert "\n" not in str(e.value)


def test_settings_that_can_be_emulated_pass():
    for s in (LinkShape(), LinkShape(bw_mbit=1000, delay_ms=50, jitter_ms=50),
              LinkShape(delay_ms=10, reorder_pct=10, loss_pct=5, dup_pct=5)):
        s.validate()


def _packet_msg(queue: int, pid: int) -> bytes:
    attrs = ld._attr(ld.NFQA_PACKET_HDR, struct.pack("!IHB", pid, 0x0800, 2))
    return ld._msg(ld.NFQNL_MSG_PACKET, queue, attrs)


def test_delayer_reads_queue_and_id_and_writes_batch_verdicts():
    m = _packet_msg(1, 123456)
    assert ld.parse_packet(m, len(m)) == (1, 123456)
    assert ld.parse_packet(m, 20) is None                          # truncated
    other = ld._msg(ld.NFQNL_MSG_CONFIG, 0, b"")
    assert ld.parse_packet(other, len(other)) is None
    v = ld.verdict_msg(0, 77, batch=True)
    length, kind = struct.unpack_from("=IH", v)
    assert length == len(v) and kind == (ld.NFNL_SUBSYS_QUEUE << 8) | ld.NFQNL_MSG_VERDICT_BATCH
    assert struct.unpack_from("!II", v, 24) == (ld.NF_ACCEPT, 77)
    single = ld.verdict_msg(1, 5, batch=False)
    assert struct.unpack_from("=H", single, 4)[0] & 0xFF == ld.NFQNL_MSG_VERDICT
    assert struct.unpack_from("!H", single, 18)[0] == 1             # the queue it answers


def test_link_node_drops_where_frames_enter_and_duplicates_where_they_leave():
    h = worker_plan(3)
    t = _nft_table(LinkShape(loss_pct=5, dup_pct=1), h)
    assert 'chain up_loss {\n    type filter hook ingress device "l3-eth0"' in t
    assert 'chain down_loss {\n    type filter hook ingress device "l3-eth1"' in t
    assert 'hook egress device "l3-eth1"' in t and 'dup to "l3-eth1"' in t
    assert 'hook egress device "l3-eth0"' in t and 'dup to "l3-eth0"' in t
    assert t.count("< 50000 counter drop") == 2 and t.count("< 10000 counter dup") == 2
    assert "dup" not in _nft_table(LinkShape(loss_pct=5), h)


def test_statistics():
    lo, hi = lc.wilson(50, 1000)
    assert lo < 0.05 < hi and hi - lo < 0.03
    assert lc.binomial_ok(97, 1000, 0.0975, 3) and not lc.binomial_ok(48, 1000, 0.0975, 4.5)
    med, lo, hi = lc.median_ci(list(range(101)))
    assert med == 50 and lo < 50 < hi
    m, h = lc.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h > 0


def test_link_node_counters_are_read_per_chain(monkeypatch):
    """nft_counts reads `nft -j` output: the chain's first counter (frames seen), the rule's
    counter (frames dropped or duplicated)."""
    import json

    import topology.impair as impair
    listing = {"nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "netdev", "name": "nina_link"}},
        {"rule": {"chain": "up_loss", "expr": [{"counter": {"packets": 1040, "bytes": 1}}]}},
        {"rule": {"chain": "up_loss", "expr": [{"match": {}}, {"counter": {"packets": 52,
                                                                           "bytes": 1}},
                                               {"drop": None}]}},
        {"rule": {"chain": "down_dup", "expr": [{"counter": {"packets": 7, "bytes": 1}}]}}]}
    asked = []
    monkeypatch.setattr(impair, "_host_run",
                        lambda node, cmd, stdin=None: (asked.append(cmd), (0, json.dumps(listing)))[1])
    assert impair.nft_counts("l1") == {"up_loss": (1040, 52), "down_dup": (7, 0)}
    assert asked == [["nft", "-j", "list", "table", "netdev", impair.LINK_NFT_TABLE]]
