"""Faults on a Mininet rack: lossy, duplicating, reordering veths (nftables + linkdelay), exact
all-reduce results for INT32, NAT8 and NAT8 + C_M, and no double counting (root; skipped with
the reason otherwise)."""
from __future__ import annotations

import os

import pytest

from nina.wire import Encoding
from test_faults import CONTRIB, N, _delta, rounds


# ---- the same on a Mininet rack (root) ----------------------------------------------------

def _rack_skip_reason() -> str | None:
    from topology import modes
    d = modes.decide("mininet", modes.probe())
    if d.error:
        return d.error
    from topology.mininet_rack import P4INFO_PATH
    if not os.path.exists(P4INFO_PATH):
        return f"no P4Info at {P4INFO_PATH} (the rack's controller needs it; make p4)"
    return None


@pytest.mark.root
@pytest.mark.parametrize("p", [1.0, 5.0], ids=["1%", "5%"])
def test_mininet_rack_with_lossy_duplicating_reordering_links_is_exact(tmp_path, p):
    why = _rack_skip_reason()
    if why:
        print(f"SKIP reason: Mininet rack unavailable: {why}")
        pytest.skip(f"Mininet rack unavailable: {why}")
    from topology.impair import LinkShape
    from topology.rack_jobs import run_allreduce as rack_allreduce
    from topology.mininet_rack import MininetRack
    shape = LinkShape(delay_ms=1.0, loss_pct=p, dup_pct=p, reorder_pct=p)
    with MininetRack(N, shape, run_dir=str(tmp_path), log=print) as rack:
        for enc, cm, size in (("int32", False, 5_000), ("nat8", False, 20_000),
                              ("nat8", True, 20_000)):
            before = {k: v[0] for k, v in rack.controller.read_counters().items()}
            rep = rack_allreduce(rack, size=size, encoding=enc, cm=cm, timeout=20.0, log=print)
            print(rep.summary())
            assert rep.exact, rep.problems
            after = {k: v[0] for k, v in rack.controller.read_counters().items()}
            d = _delta(after, before)
            e = Encoding.NAT8 if enc == "nat8" else Encoding.INT32
            assert sum(d.get(x, 0) for x in CONTRIB) == N * rounds(size, e, 1,
                                                                    rack.default_window)
