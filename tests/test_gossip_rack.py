"""Decentralized training on the Mininet rack: the workers' gossip datagrams go host to host
through the switch's plain forwarding (no aggregation), on real veth links."""
from __future__ import annotations

import pytest

from nina import gossip_wire as gw
from topology import modes


def _skip_reason() -> str | None:
    d = modes.decide("mininet", modes.probe())
    return d.error or None


@pytest.mark.root
@pytest.mark.skipif(_skip_reason() is not None,
                    reason=f"Mininet rack unavailable: {_skip_reason()}")
def test_powergossip_on_the_rack_goes_through_the_switch(tmp_path):
    from topology.impair import LinkShape
    from topology.mininet_rack import MininetRack
    from topology.rack_jobs import run_train
    rack = MininetRack(4, LinkShape(), run_dir=str(tmp_path), log=print)
    with rack:
        before = rack.controller.read_counters()["FORWARDED"][0]
        rows, table = run_train(rack, "--algorithm powergossip --topology ring --model mlp "
                                      "--steps 60 --eval-every 20 --no-progress", log=print)
        print(table)
        after = rack.controller.read_counters()["FORWARDED"][0]
    r = rows[0]
    assert r["final_test_accuracy"] >= 0.85, r
    assert r["path"] == "PowerGossip rank 1 x1 on a ring"
    # each of the 4 workers sent 2 datagrams per step to its ring neighbours via the switch
    assert after - before >= 4 * 2 * 60, (before, after)
    assert 0 <= r["bytes_up"] - r["bytes_down"] <= 32 * gw.HEADER.size   # late NACKs at most
