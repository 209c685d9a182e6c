"""The rack's links measured against their settings (root + Mininet; skipped with the reason
otherwise). Bounds are loose enough for a loaded 2-core machine and tight enough to catch what
went wrong before: a direction left undelayed (RTT half what it should be), ping missing the
receive direction's delay, a delayer that caps a flow at a tenth of the link, a loss that the
sender sees and re-sends. The precise figures are bench/links.py's."""
from __future__ import annotations

import os
import shutil
import statistics

import pytest

from topology import linkcheck as lc

BW, DELAY = 50.0, 10.0


def _skip_reason() -> str | None:
    from topology import modes
    d = modes.decide("mininet", modes.probe())
    if d.error:
        return d.error
    from topology.mininet_rack import P4INFO_PATH
    if not os.path.exists(P4INFO_PATH):
        return f"no P4Info at {P4INFO_PATH} (the rack's controller needs it; make p4)"
    from topology.impair import netem_available
    if not netem_available() and not (shutil.which("nft") and shutil.which("iptables")):
        return "no netem and no nft/iptables (apt-get install nftables iptables)"
    return None


pytestmark = [pytest.mark.root,
              pytest.mark.skipif(_skip_reason() is not None,
                                 reason=f"Mininet rack unavailable: {_skip_reason()}")]


def test_delay_holds_on_both_path_kinds_and_tcp_fills_the_delayed_link(tmp_path):
    from topology.impair import LinkShape
    from topology.mininet_rack import MininetRack
    with MininetRack(2, LinkShape(bw_mbit=BW, delay_ms=DELAY), run_dir=str(tmp_path),
                     trace=False, log=print) as rack:
        net = rack.net
        # ping: the kernel answers and timestamps, so only the links (and the delayer) are in
        # the loop, not a Python echo server waiting for a loaded CPU
        coord = statistics.median(lc.ping_rtt(net, "h1", "10.0.0.100", 100, 0.01))
        peer = statistics.median(lc.ping_rtt(net, "h1", "10.0.0.2", 100, 0.01))
        tcp, _ = lc.mean_ci(lc.tcp_bulk(net, "h1", "h2", "10.0.0.2", 4.0, 1.5))
        print(f"ping RTT h1-hc {coord:.2f} ms, h1-h2 {peer:.2f} ms, TCP {tcp:.1f} Mbit/s")
    # one delayed link each way: 2 x 10 ms; two links: 4 x 10 ms (+ a loaded machine's slack);
    # a direction left undelayed would be 10 ms short
    assert 2 * DELAY - 0.5 <= coord <= 2 * DELAY + 4, coord
    assert 4 * DELAY - 1.0 <= peer <= 4 * DELAY + 8, peer
    # the delayer must not cap the flow (it did, at 4.4 Mbit/s = 0.09x) and HTB still holds
    # it. Alone on the machine this measures about 47 Mbit/s (0.95x); inside a full `make test`
    # on 2 cores it measured 25 (0.5x), the switch process sharing the CPU: bench/links.py
    # tracks the figure, this bound only the order of magnitude
    assert 0.3 * BW <= tcp <= 1.02 * BW, tcp


def test_loss_and_duplication_rates_match_per_direction_and_round_trip(tmp_path):
    from topology.impair import LinkShape, nft_counts
    from topology.mininet_rack import MininetRack
    p = 0.05
    with MininetRack(2, LinkShape(loss_pct=100 * p), run_dir=str(tmp_path / "loss"),
                     trace=False, log=print) as rack:
        n = 2000
        got = len(lc.udp_rtt(rack.net, "h1", "hc", "10.0.0.100", n, interval=0.001))
        up = lc.udp_stream(rack.net, "h1", "hc", "10.0.0.100", 3.0, count=n, size=200)
        counts = nft_counts(rack.net.get("l1"))
    lost_rt = n - got
    seen, dropped = counts["up_loss"]
    print(f"round trip lost {lost_rt}/{n}; uplink: link node dropped {dropped}/{seen}, "
          f"end to end {up['sent'] - up['unique']}/{up['sent']}")
    # 4.5 sigma: a false alarm once in ~150000 runs; a direction left out is ~7 sigma off
    assert lc.binomial_ok(lost_rt, n, 1 - (1 - p) ** 2, 4.5), lost_rt
    # the link's own counters (end to end also counts what a CPU-starved switch dropped)
    assert seen >= up["sent"] + n and lc.binomial_ok(dropped, seen, p, 4.5), (dropped, seen)
    with MininetRack(2, LinkShape(dup_pct=100 * p), run_dir=str(tmp_path / "dup"),
                     trace=False, log=print) as rack:
        down = lc.udp_stream(rack.net, "hc", "h1", "10.0.0.1", 3.0, count=n, size=200)
    print(f"downlink duplicated {down['duplicates']}/{down['unique']}")
    assert down["unique"] == down["sent"]
    assert lc.binomial_ok(down["duplicates"], down["unique"], p, 4.5), down["duplicates"]
