"""The rack's link emulation, configured vs measured, in one run (root, Mininet).

    sudo python bench/links.py [--workers 2] [--quick]

Racks of 2 workers (+ coordinator) come up one after another, each with one link setting, and
topology/linkprobe.py measures from inside the hosts (topology/linkcheck.py drives it):
- RTT on both path kinds: worker-coordinator (one impaired link: 2 one-way delays) and
  worker-worker (two: 4), by UDP probes (the prober's clock) and by ping (kernel timestamps),
  against the sum of one-way delays plus the same path's RTT on a rack without delay
  (the base: switch and stack time) measured in the same run;
- one-way delay distribution with jitter, per direction, against the uniform +-J asked for;
- bulk TCP and paced UDP (1.1x the link) throughput, without delay and with 10 and 50 ms,
  against the configured bandwidth (TCP payload bound: bw x 1448/1514; UDP: IP bytes,
  bw x 1500/1514), mean of 0.5 s samples after a warmup, +- its 95% interval;
- loss, duplication and reordering rates per direction over many datagrams, and round-trip loss
  on both path kinds, with 95% Wilson intervals against the rate set.
Goals (the issue's): RTT within 5% (or 0.2 ms) of expected, throughput >= 0.9x the bandwidth,
rates inside their statistical bound. A row's `ok` says whether it meets its goal. Run it
under the rack lock when others share the machine: flock /tmp/nina-rack.lock python bench/...
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from topology import linkcheck as lc  # noqa: E402
from topology.impair import LinkShape  # noqa: E402

BW = 50.0
TCP_PAYLOAD, UDP_IP, FRAME = 1448, 1500, 1514
COORD_IP = "10.0.0.100"
H2_IP = "10.0.0.2"
RATE_PPS = 4000          # datagrams/s of the loss/dup/reorder streams (200-byte payloads)
RATE_MBIT = RATE_PPS * 228 * 8 / 1e6


def _rack(shape: LinkShape, workers: int, run_dir: str):
    from topology.mininet_rack import MininetRack
    return MininetRack(workers, shape, run_dir=run_dir, trace=False, log=lambda *a: None)


class Table:
    def __init__(self, title: str, header: list[str]):
        self.title, self.header, self.rows = title, header, []

    def add(self, *cells) -> None:
        self.rows.append([c if isinstance(c, str) else f"{c:.2f}" for c in cells])
        print("  " + " | ".join(self.rows[-1]), file=sys.stderr, flush=True)

    def text(self) -> str:
        w = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
             for i, h in enumerate(self.header)]
        out = [self.title, "  ".join(h.ljust(w[i]) for i, h in enumerate(self.header)),
               "-" * (sum(w) + 2 * (len(w) - 1))]
        out += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in self.rows]
        return "\n".join(out)


def rtt_rows(t: Table, net, label: str, d: float, base: dict, count: int) -> None:
    for path, dst, ip, links in (("worker-coord", "hc", COORD_IP, 1),
                                 ("worker-worker", "h2", H2_IP, 2)):
        exp = 2 * links * d
        for how, xs in (("udp", lc.udp_rtt(net, "h1", dst, ip, count)),
                        ("ping", lc.ping_rtt(net, "h1", ip, count))):
            med, lo, hi = lc.median_ci(xs)
            b = base.get((path, how), 0.0)
            err = med - b - exp
            tol = max(0.05 * exp, 0.2)
            goal = ("ok" if abs(err) <= tol else "MISS") if d else "(base)"
            t.add(label, path, how, f"{exp:.1f}", f"{b:.2f}", f"{med:.2f} [{lo:.2f},{hi:.2f}]",
                  f"{lc.percentile(xs, 99):.2f}", f"{err:+.2f}", f"{tol:.2f}", goal)


def throughput_rows(t: Table, net, label: str, d: float, quick: bool) -> None:
    secs, warm = (6, 2) if d < 20 else (10, 4)
    if quick:
        secs, warm = secs - 2, warm - 1
    tcp = lc.tcp_bulk(net, "h1", "h2", H2_IP, secs, warm)
    m, h = lc.mean_ci(tcp)
    bound = BW * TCP_PAYLOAD / FRAME
    t.add(label, "tcp bulk h1->h2", f"{BW:g}", f"{bound:.1f}", f"{m:.1f} +-{h:.1f}",
          f"{m / BW:.3f}", "ok" if m >= 0.9 * BW else "MISS")
    u = lc.udp_stream(net, "h1", "h2", H2_IP, 1.1 * BW, seconds=secs - 1, warmup=warm - 1)
    m, h = lc.mean_ci(u["ip_mbit"])
    t.add(label, "udp 1.1x h1->h2", f"{BW:g}", f"{BW * UDP_IP / FRAME:.1f}",
          f"{m:.1f} +-{h:.1f}", f"{m / BW:.3f}", "ok" if m >= 0.9 * BW else "MISS")


def rate_row(t: Table, label: str, what: str, k: int, n: int, p: float) -> None:
    lo, hi = lc.wilson(k, n)
    t.add(label, what, f"{100 * p:.2f}", f"{n}", f"{100 * k / n:.2f}",
          f"[{100 * lo:.2f},{100 * hi:.2f}]", "ok" if lo <= p <= hi or
          lc.binomial_ok(k, n, p, 3.0) else "MISS")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--workers", type=int, default=2, help="worker hosts per rack (>= 2)")
    ap.add_argument("--quick", action="store_true", help="fewer packets, shorter flows")
    ap.add_argument("--run-dir", default="/tmp/nina-bench-links")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/links.py: needs root (Mininet rack)", file=sys.stderr)
        return 2
    if a.workers < 2:
        print("bench/links.py: --workers must be >= 2 (worker-worker paths)", file=sys.stderr)
        return 2
    n_rtt = 100 if a.quick else 300
    n_rate = 4000 if a.quick else 10000
    rtt = Table("RTT (ms): expected = sum of one-way delays on the path; base = same path, "
                "no delay, same run; err = median - base - expected",
                ["link", "path", "probe", "expected", "base", "median [95% CI]", "p99", "err",
                 "tol", "goal"])
    thr = Table(f"throughput (Mbit/s) at --bw {BW:g}: mean of 0.5 s samples after warmup "
                f"+-95% CI; bound: payload share of the link",
                ["link", "flow", "bw", "bound", "measured", "x bw", "goal >=0.9x"])
    jit = Table("one-way delay (ms) with jitter: UDP at 50 packets/s (spacing > 2x jitter, so "
                "FIFO order does not bunch them); expected = uniform d +- j",
                ["link", "direction", "p5 exp/meas", "p50 exp/meas", "p95 exp/meas",
                 "min/max", "packets"])
    rates = Table("rates (%) per link direction and round trip, 95% Wilson interval",
                  ["link", "what", "set", "packets", "measured", "95% CI", "goal"])
    t_start = time.time()
    load = os.getloadavg()
    os.makedirs(a.run_dir, exist_ok=True)
    base: dict = {}

    def run(label: str, shape: LinkShape, body) -> None:
        print(f"[{time.time() - t_start:5.0f}s] rack: {shape.describe()}", file=sys.stderr,
              flush=True)
        with _rack(shape, a.workers, os.path.join(a.run_dir, label.replace(" ", "_"))) as r:
            body(r.net)

    def clean(net):
        for path, dst, ip in (("worker-coord", "hc", COORD_IP),
                              ("worker-worker", "h2", H2_IP)):
            base[(path, "udp")] = statistics.median(lc.udp_rtt(net, "h1", dst, ip, n_rtt))
            base[(path, "ping")] = statistics.median(lc.ping_rtt(net, "h1", ip, n_rtt))
        rtt_rows(rtt, net, "none", 0.0, base, n_rtt)
        tcp = lc.tcp_bulk(net, "h1", "h2", H2_IP, 5, 2)
        m, h = lc.mean_ci(tcp)
        thr.add("no --bw", "tcp bulk h1->h2", "-", "-", f"{m:.1f} +-{h:.1f}", "-",
                "(emulator's own rate)")

    run("none", LinkShape(), clean)
    for d in (0.0, 10.0, 50.0):
        label = f"bw {BW:g}" + (f" d {d:g}" if d else "")

        def shaped(net, d=d, label=label):
            if d:
                rtt_rows(rtt, net, label, d, base, n_rtt)
            throughput_rows(thr, net, label, d, a.quick)
        run(label, LinkShape(bw_mbit=BW, delay_ms=d), shaped)

    def jitter(net, d=10.0, j=5.0):
        label = f"d {d:g} j {j:g}"
        rtt_rows(rtt, net, label, d, base, n_rtt)
        for direction, src, dst, ip in (("uplink h1->hc", "h1", "hc", COORD_IP),
                                        ("downlink hc->h1", "hc", "h1", "10.0.0.1")):
            n = 150 if a.quick else 500
            r = lc.udp_stream(net, src, dst, ip, 50 * 92 * 8 / 1e6, count=n, size=64,
                                 steady=True)
            ow = r["one_way_ms"]
            cells = [f"{d + j * (2 * q / 100 - 1):.1f}/{lc.percentile(ow, q):.2f}"
                     for q in (5, 50, 95)]
            jit.add(label, direction, *cells, f"{min(ow):.2f}/{max(ow):.2f}", f"{len(ow)}")
    run("d 10 j 5", LinkShape(delay_ms=10, jitter_ms=5), jitter)

    def loss(net, p=0.05):
        from topology.impair import nft_counts
        for direction, chain, src, dst, ip in (
                ("loss uplink h1->hc", "up_loss", "h1", "hc", COORD_IP),
                ("loss downlink hc->h1", "down_loss", "hc", "h1", "10.0.0.1")):
            before = nft_counts(net.get("l1")).get(chain, (0, 0))
            r = lc.udp_stream(net, src, dst, ip, RATE_MBIT, count=n_rate, size=200)
            after = nft_counts(net.get("l1")).get(chain, (0, 0))
            rate_row(rates, "loss 5", direction + " end to end", r["sent"] - r["unique"],
                     r["sent"], p)
            # the link's own drops (its nft counters): end to end also counts frames the
            # switch or a host lost when the loaded CPU left their socket buffers full
            rate_row(rates, "loss 5", direction + " link node", after[1] - before[1],
                     after[0] - before[0], p)
        for what, dst, ip, links in (("round trip h1<->hc", "hc", COORD_IP, 1),
                                     ("round trip h1<->h2", "h2", H2_IP, 2)):
            n = n_rate // 4
            got = len(lc.udp_rtt(net, "h1", dst, ip, n, interval=0.001))
            rate_row(rates, "loss 5", what, n - got, n, 1 - (1 - p) ** (2 * links))
    run("loss 5", LinkShape(loss_pct=5), loss)

    def dup(net, p=0.05):
        for direction, src, dst, ip in (("dup uplink h1->hc", "h1", "hc", COORD_IP),
                                        ("dup downlink hc->h1", "hc", "h1", "10.0.0.1")):
            r = lc.udp_stream(net, src, dst, ip, RATE_MBIT, count=n_rate, size=200)
            rate_row(rates, "dup 5", direction, r["duplicates"], r["unique"], p)
    run("dup 5", LinkShape(dup_pct=5), dup)

    def reorder(net, p=0.10, d=10.0):
        for direction, src, dst, ip in (("reorder uplink h1->hc", "h1", "hc", COORD_IP),
                                        ("reorder downlink hc->h1", "hc", "h1",
                                         "10.0.0.1")):
            r = lc.udp_stream(net, src, dst, ip, RATE_MBIT, count=n_rate // 2, size=200)
            fast = sum(1 for x in r["one_way_ms"] if x < d / 2)
            rate_row(rates, "d 10 reorder 10", direction + " (not delayed)", fast,
                     r["unique"], p)
    run("d 10 reorder 10", LinkShape(delay_ms=10, reorder_pct=10), reorder)

    print(f"bench/links.py on {os.cpu_count()} CPUs, load average at start "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, {a.workers} workers, "
          f"{time.time() - t_start:.0f} s{' (--quick)' if a.quick else ''}\n")
    for t in (rtt, thr, jit, rates):
        print(t.text() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
