"""Interface mode of bench/switch.py: the switch on raw veth interfaces, rings against mmsg.

    python bench/switch.py --modes ifaces [--packets 20000] [--repeat 5] [--workers 2,4,8]
    python bench/switch_ifaces.py ...           (the same, this table only)

Root only (veth pairs; skipped with the reason otherwise). For INT32, NAT8 and NAT8+C_M at n
workers, these servers run side by side, each on a veth pair of its own (switch end
nb<tag>s, host end nb<tag>h in this namespace, no addresses, IPv6 off):
- `nina switch --mode ifaces --io IO` for each I/O kind of --ifaces-io: ring-v3 (PACKET_MMAP
  rings, TPACKET_V3 receive), ring-v2 (TPACKET_V2 receive), mmsg (recvmmsg/sendmmsg, the I/O
  before the rings); traces off, and on for the first kind;
- a bare reflector on each I/O kind (switch.io_raw.RawIO with the pipeline replaced by "answer
  the sender with the switch's result packets", framed and checksummed by the same compiled
  code): the bound each switch is held against.
The n workers sit behind the one port (their frames come from the host end, with the
addresses the job admits), so their updates queue in the order they were sent, as on
loopback. Each measurement is a drain: the server is paused (SIGSTOP), --packets updates
(whole rounds over a window of slots) are written into the host end, where the kernel
queues them in the server's receive ring (socket buffer for mmsg), the server is resumed and
the time until the host end's receive counter (/sys/class/net/IF/statistics/rx_packets) has
counted every result gives the rate; the server's CPU per update comes from
/proc/PID/task/*/schedstat (all its threads). The best of --repeat drains counts, servers
drained in turn.

A second table gives the round trip of one update through a switch with n = 1 (closed loop,
window 1: send, wait for the result, send the next): the latency each I/O adds when the
load is light, where a TPACKET_V3 ring waits for its block timer.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nina.config import SWITCH_MAC, mac_to_int  # noqa: E402
from nina.wire import (FLAG_CM, UDP_PORT, Encoding, Header, MsgType,  # noqa: E402
                       pack_packet, payload_layout, result_parts, round_flags)

TODAY_KPPS = "21-47"          # the issue's interface-mode figure before this work
WORKER_IP, SWITCH_IP = "10.91.0.{}", "10.91.0.254"
VARIANTS = ((Encoding.INT32, False), (Encoding.NAT8, False), (Encoding.NAT8, True))
DEFAULT_IOS = "ring-v2,ring-v3,mmsg"   # the default I/O first (it gets the trace-on row)


def kinds(ios: list[str]) -> list[tuple[str, str, bool]]:
    """(server, I/O, trace) of one group: a reflector and the switch on each I/O kind, and the
    switch with traces on the first."""
    out = []
    for io in ios:
        out += [("reflector", io, False), ("switch", io, False)]
        if io == ios[0]:
            out.append(("switch", io, True))
    return out


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "interface mode needs root (veth pairs, AF_PACKET)"
    if subprocess.run(["which", "ip"], capture_output=True).returncode:
        return "the `ip` command (iproute2) is not installed"
    return None


# ---------------------------------------------------------------- the reflector server

def serve_reflector(iface: str, io: str, ring_mib: int, reply_bytes: int, replies: int,
                    tx_segments: int = 1) -> int:
    """switch.io_raw.RawIO on `iface` with a pipeline that only answers: `replies` frames of
    `reply_bytes` UDP payload per update to its sender, out of the port it came in."""
    from switch.io_raw import RawIO
    from switch.kernel import N_REP_COLS, R_DIP, R_DMAC, R_DPORT, R_PORT, R_SIP, R_SMAC
    from switch.pipeline import BATCH

    rows = BATCH * replies

    class Image:
        replicas = np.zeros((rows, N_REP_COLS), np.int64)

    Image.replicas[:, R_DMAC] = 0x020000000101
    Image.replicas[:, R_SMAC] = mac_to_int(SWITCH_MAC)
    Image.replicas[:, R_SIP] = int.from_bytes(socket.inet_aton(SWITCH_IP), "big")

    class Reflector:
        trace = None
        out = np.zeros((rows, reply_bytes), np.uint8)
        out_len = np.full(rows, reply_bytes, np.int64)
        out_rep = np.arange(rows, dtype=np.int64)

        def process_batch(self, rx, rx_off, rx_len, rx_port, rx_ip, rx_udp, frame_len, n,
                          send):
            k = n * replies
            o = int(rx_off[0])
            self.out[:k, :16] = np.repeat(rx[:n, o:o + 16], replies, axis=0)
            Image.replicas[:k, R_PORT] = np.repeat(rx_port[:n], replies)
            Image.replicas[:k, R_DIP] = np.repeat(rx_ip[:n], replies)
            Image.replicas[:k, R_DPORT] = np.repeat(rx_udp[:n], replies)
            send(self.out, self.out_len, self.out_rep, k, Image)

        def drop_malformed(self, port, n):
            pass

        def forward(self, port, dst_mac, n):
            return None

    raw = RawIO([iface], io, ring_mib, tx_segments)
    signal.signal(signal.SIGINT, lambda *_: raw.stop())
    signal.signal(signal.SIGTERM, lambda *_: raw.stop())
    print(f"reflector listening on {raw.describe()}", flush=True)
    raw.run(Reflector())
    raw.close()
    return 0


# ---------------------------------------------------------------- veths and servers

def _ip(*cmd: str) -> None:
    subprocess.run(["ip", *cmd], check=True, capture_output=True, timeout=20)


class Veth:
    """A veth pair nb<tag>s (switch end) / nb<tag>h (host end), up, no addresses, no IPv6.
    count_bytes (results sent as GSO frames, which reach the host end whole): results are
    counted from the host end's byte counter, each GSO frame one 42-byte header."""

    def __init__(self, tag: str, count_bytes: int = 0):
        self.sw, self.host = f"nb{tag}s", f"nb{tag}h"
        subprocess.run(["ip", "link", "del", self.sw], capture_output=True, timeout=20)
        _ip("link", "add", self.sw, "type", "veth", "peer", "name", self.host)
        for dev in (self.sw, self.host):
            subprocess.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1"],
                           capture_output=True, timeout=20)
            _ip("link", "set", dev, "up")
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # sends, receives none
        from switch.io_udp import set_buffers
        set_buffers(self.tx, 64 << 20)
        self.tx.bind((self.host, 0))
        self._counter = f"/sys/class/net/{self.host}/statistics/rx_packets"
        self._bytes = f"/sys/class/net/{self.host}/statistics/rx_bytes"
        self.result_bytes = count_bytes   # UDP payload of one result (0: count frames)
        if count_bytes:
            from topology.mininet_rack import GSO_PASS
            subprocess.run(["ethtool", "-K", self.sw, *GSO_PASS], check=True,
                           capture_output=True, timeout=20)

    def received(self) -> int:
        """Results that reached the host end so far."""
        with open(self._counter) as f:
            frames = int(f.read())
        if not self.result_bytes:
            return frames
        from nina.wire import ETH_LEN, IPV4_MIN_LEN, UDP_LEN
        with open(self._bytes) as f:
            head = ETH_LEN + IPV4_MIN_LEN + UDP_LEN   # once per frame, GSO frame or not
            return (int(f.read()) - head * frames) // self.result_bytes

    def close(self) -> None:
        self.tx.close()
        subprocess.run(["ip", "link", "del", self.sw], capture_output=True, timeout=20)


def _frames(n: int, enc: Encoding, window: int, packets: int, rounds_from: int = 0):
    """Frames of whole rounds over `window` slots from n workers behind one port, the round
    numbers starting at rounds_from (each drain continues where the last one stopped)."""
    from bench.switch_load import make_sequence
    from switch.packets import build_udp_frame
    smac = mac_to_int(SWITCH_MAC)
    dip = int.from_bytes(socket.inet_aton(SWITCH_IP), "big")
    seq = make_sequence(n, enc, window, packets)
    frames = []
    for w, data in seq:
        ip = int.from_bytes(socket.inet_aton(WORKER_IP.format(w + 1)), "big")
        frames.append(build_udp_frame(smac, 0x020000000101 + w, ip, dip, 41000 + w, UDP_PORT,
                                      data))
    rows = np.frombuffer(b"".join(frames), np.uint8).reshape(len(frames), -1)
    return rows


class Target:
    def __init__(self, kind: str, io: str, trace: bool, n: int, enc: Encoding, cm: bool,
                 args, tmp: Path, tag: str, rows: np.ndarray):
        self.kind, self.io, self.trace, self.n, self.enc, self.cm = kind, io, trace, n, enc, cm
        reply = 16 + payload_layout(MsgType.RESULT, enc, FLAG_CM if cm else 0).nbytes
        self.veth = Veth(tag, reply if args.tx_gso > 1 else 0)
        self.rows = rows
        self.parts = result_parts(enc, FLAG_CM if cm else 0)
        self.rates: list[float] = []
        self.cpus: list[float] = []
        # room for a whole drain: 400 bytes an update in a TPACKET_V3 block, a 2 KiB slot in a
        # TPACKET_V2 ring (and a plain socket's buffer is sized after the ring's MiB)
        per = 2048 if io == "ring-v2" else 400
        ring_mib = max(4, -(-len(rows) * per * 5 // 4 // (1 << 20)))
        if kind == "reflector":
            cmd = [sys.executable, __file__, "--serve-reflector", self.veth.sw, io,
                   str(ring_mib), str(reply), str(self.parts), str(args.tx_gso)]
        else:
            jobs = [{"job_id": 1, "n_workers": n, "encoding": enc.name, "cm": cm,
                     "slot_count": args.window, "switch_ip": SWITCH_IP,
                     "workers": [{"wid": w, "ip": WORKER_IP.format(w + 1), "udp_port": 41000 + w,
                                  "port": 1, "mac": f"02:00:00:00:01:{w + 1:02x}"}
                                 for w in range(n)]}]
            jf = tmp / f"{tag}.json"
            jf.write_text(json.dumps(jobs))
            cmd = [sys.executable, "-m", "nina.cli", "switch", "--mode", "ifaces", "--ifaces",
                   self.veth.sw, "--jobs", str(jf), "--io", io, "--ring-mib", str(ring_mib),
                   "--tx-gso", str(args.tx_gso)]
            if trace:
                cmd += ["--trace", str(tmp / f"{tag}.trace")]
        from bench.switch_load import Server
        try:
            self.server = Server(cmd, ready="listening on interfaces")
        except BaseException:
            self.veth.close()
            raise

    def drain(self) -> None:
        from bench.switch_load import cpu_ns
        from nina.mmsg import MsgRing
        pid = self.server.proc.pid
        base = self.veth.received()
        os.kill(pid, signal.SIGSTOP)
        try:
            tx = MsgRing(1024, 0)
            fd, rows, sent = self.veth.tx.fileno(), self.rows, 0
            while sent < len(rows):
                k = min(1024, len(rows) - sent)
                ok, failed = tx.send_rows(fd, rows[sent:sent + k], rows.shape[1], k)
                sent += ok + failed
        finally:
            time.sleep(0.05)
            c0 = cpu_ns(pid)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGCONT)
        expected = len(rows) * self.parts
        got, last, idle_since = 0, t0, t0
        while got < expected:
            now = self.veth.received() - base
            t = time.perf_counter()
            if now != got:
                got, last, idle_since = now, t, t
            elif t - idle_since > 2.0:
                break   # results lost: rate over what arrived
            time.sleep(0.0003)
        time.sleep(0.05)   # the trace writer's share of this drain's records: its CPU counts too
        cpu = (cpu_ns(pid) - c0) * 1e-9
        if got < expected * 0.9:
            out = self.server.stop()
            raise RuntimeError(f"{self.kind}/{self.io}: only {got} of {expected} results; "
                               f"the server said:\n{out}")
        self.rates.append(got / self.parts / (last - t0))   # updates/s
        self.cpus.append(cpu / (got / self.parts))

    def stop(self) -> dict:
        try:
            out = self.server.stop() if self.server.proc.poll() is None else ""
        finally:
            self.veth.close()
        if self.kind == "switch" and self.rates and "COMPLETE" not in out:
            raise RuntimeError(f"the switch completed no round:\n{out}")
        return {"pps": max(self.rates, default=float("nan")),
                "cpu": min(self.cpus, default=float("nan"))}


def run_group(n: int, enc: Encoding, cm: bool, args, tmp: Path) -> dict:
    """The servers of one (encoding, n), drained in turn --repeat times."""
    tag0 = f"{os.getpid() % 1000:03d}"
    rows = _frames(n, enc, args.window, args.packets)
    targets = []
    try:
        for i, (kind, io, trace) in enumerate(kinds(args.ios)):
            targets.append(Target(kind, io, trace, n, enc, cm, args, tmp, f"{tag0}{i}", rows))
        for rep in range(args.repeat):
            log(f"ifaces {enc.name}{'+C_M' if cm else ''} n={n}: drain {rep + 1}/{args.repeat}"
                f" of {len(targets)} servers ({len(rows)} updates each)")
            for t in targets:
                t.drain()
    finally:   # every server stopped and every veth deleted, even after a failed drain
        results, errors = {}, []
        for t in targets:
            try:
                results[t.kind, t.io, t.trace] = t.stop()
            except Exception as e:   # noqa: BLE001 (report after the others are stopped)
                errors.append(e)
        if errors:
            raise errors[0]
    return results


# ---------------------------------------------------------------- latency (n = 1)

def round_trip_us(io: str, tmp: Path, trips: int) -> float:
    """Median µs from sending one update to the result coming back, n = 1, window 1."""
    from bench.switch_load import Server
    from switch.packets import build_udp_frame
    veth = Veth(f"{os.getpid() % 1000:03d}L")
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    rx.bind((veth.host, 0))
    jobs = [{"job_id": 1, "n_workers": 1, "encoding": "NAT8", "cm": True, "slot_count": 1,
             "switch_ip": SWITCH_IP,
             "workers": [{"wid": 0, "ip": WORKER_IP.format(1), "udp_port": 41000, "port": 1,
                          "mac": "02:00:00:00:01:01"}]}]
    jf = tmp / f"latency-{io}.json"
    jf.write_text(json.dumps(jobs))
    server = Server([sys.executable, "-m", "nina.cli", "switch", "--mode", "ifaces",
                     "--ifaces", veth.sw, "--jobs", str(jf), "--io", io],
                    ready="listening on interfaces")
    smac = mac_to_int(SWITCH_MAC)
    sip = int.from_bytes(socket.inet_aton(WORKER_IP.format(1)), "big")
    dip = int.from_bytes(socket.inet_aton(SWITCH_IP), "big")
    times = []
    try:
        for r in range(trips):
            data = pack_packet(Header(job=1, worker=0, encoding=Encoding.NAT8,
                                      flags=round_flags(r), slot=0, count=256, exponent=120,
                                      offset=0), np.zeros(256, np.uint8))
            frame = build_udp_frame(smac, 0x020000000101, sip, dip, 41000, UDP_PORT, data)
            t0 = time.perf_counter()
            veth.tx.send(frame)
            while True:
                if not select.select([rx], [], [], 1.0)[0]:
                    raise RuntimeError(f"no result in 1 s ({io}, trip {r})")
                f = rx.recv(2048)
                if len(f) > 42 and f[34:36] == UDP_PORT.to_bytes(2, "big"):
                    break
            times.append(time.perf_counter() - t0)
    finally:
        server.stop()
        rx.close()
        veth.close()
    return float(np.median(times)) * 1e6


# ---------------------------------------------------------------- the tables

def run(args) -> int:
    from switch.raw_io_options import MAX_TX_SEGMENTS
    if not 1 <= args.tx_gso <= MAX_TX_SEGMENTS:
        print(f"error: --tx-gso must be 1..{MAX_TX_SEGMENTS}, got {args.tx_gso}", file=sys.stderr)
        return 2
    why = unavailable()
    if why:
        print(f"\ninterface-mode table skipped: {why}")
        return 0
    args.ios = [x.strip() for x in args.ifaces_io.split(",") if x.strip()]
    ns = [int(x) for x in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ninabench") as tmpdir:
        for n in ns:
            for enc, cm in VARIANTS:
                rows.append((enc, cm, n, run_group(n, enc, cm, args, Path(tmpdir))))
        lat = {io: round_trip_us(io, Path(tmpdir), args.trips) for io in args.ios}
    print(f"\nembedded switch, interface mode: veth drains of {args.packets} updates (best of "
          f"{args.repeat}), n workers behind one port, window {args.window}"
          + (f", results in GSO frames of up to {args.tx_gso}" if args.tx_gso > 1 else "")
          + f"; "
          f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")
    base = "mmsg" if "mmsg" in args.ios else None
    hdr = (f"{'enc':<10}{'n':>3}{'io':>9}{'trace':>6}{'kpps':>8}{'refl kpps':>10}{'ratio':>7}"
           f"{'us/pkt':>8}{'refl us':>9}{'cpu ratio':>10}"
           + (f"{'x mmsg':>8}" if base else "") + f"{'x today':>9}")
    print(hdr)
    print("-" * len(hdr))
    hi_today = float(TODAY_KPPS.split("-")[1])
    for enc, cm, n, res in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        for kind, io, trace in kinds(args.ios):
            if kind != "switch":
                continue
            sw, ref = res["switch", io, trace], res["reflector", io, False]
            line = (f"{enc.name + ('+C_M' if cm else ''):<10}{n:>3}{io:>9}"
                    f"{'on' if trace else 'off':>6}{sw['pps'] / 1e3:>8.1f}"
                    f"{ref['pps'] / 1e3:>10.1f}{sw['pps'] / ref['pps']:>7.2f}"
                    f"{sw['cpu'] * 1e6:>8.2f}{ref['cpu'] * 1e6:>9.2f}"
                    f"{ref['cpu'] / sw['cpu']:>10.2f}")
            if base:
                line += f"{sw['pps'] / res['switch', base, False]['pps']:>7.1f}x"
            print(line + f"{sw['pps'] / 1e3 / hi_today:>8.1f}x")
    print("kpps: update packets/s through the switch, wall clock; refl: the bare reflector on "
          "the same I/O and load; ratio: switch/\nreflector; us/pkt: server CPU per update "
          "(all its threads, /proc/PID/task/*/schedstat; includes the kernel's delivery of the\nsent "
          "frames to the veth peer); cpu ratio: reflector/switch CPU per update; io: ring-v3 = "
          "PACKET_MMAP rings with a\nTPACKET_V3 receive ring, ring-v2 = with a TPACKET_V2 one "
          "(both with a TX ring), mmsg = recvmmsg/sendmmsg (the I/O before\nthe rings); x mmsg: "
          f"over the switch on mmsg; x today: over the issue's {TODAY_KPPS} kpps (its upper "
          f"end).")
    print(f"\nround trip of one update, n = 1, window 1, median of {args.trips} (light load): "
          + ", ".join(f"{io} {lat[io]:.0f} us" for io in args.ios))
    return 0


def add_args(ap) -> None:
    ap.add_argument("--trips", type=int, default=200,
                    help="interface mode: round trips of the latency line")
    ap.add_argument("--tx-gso", type=int, default=1, metavar="N",
                    help="interface mode: switch and reflector send results as GSO frames of up "
                         "to N datagrams (nina switch --tx-gso; the rack's clean links pass 15), "
                         "which reach the host end whole: results are then counted from its "
                         "byte counter (default 1: a frame per result)")
    ap.add_argument("--ifaces-io", default=DEFAULT_IOS,
                    help=f"interface mode: the I/O kinds to compare, the first also with traces "
                         f"on (default {DEFAULT_IOS})")


def main() -> int:
    import argparse
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-reflector":
        iface, io, mib, reply, replies, segs = sys.argv[2:8]
        return serve_reflector(iface, io, int(mib), int(reply), int(replies), int(segs))
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=20000, help="updates per drain")
    ap.add_argument("--repeat", type=int, default=5, help="drains per server (best counts)")
    ap.add_argument("--window", type=int, default=32, help="slots per round")
    ap.add_argument("--workers", default="2,4,8", help="values of n")
    add_args(ap)
    return run(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
