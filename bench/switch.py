"""Packet rate of the embedded switch on loopback UDP and on raw interfaces, next to a bare
reflector.

    python bench/switch.py [--packets 20000] [--repeat 3] [--workers 2,4,8] [--modes local,ifaces]

The interface-mode table (root: veth pairs) is bench/switch_ifaces.py's, described there.

For INT32 and NAT8 at n workers, with traces off and on, a real `nina switch --mode local`
process (default pool) aggregates the updates of n workers (n real UDP sockets in this
process). Each measurement is a drain: the server is paused (SIGSTOP), the workers queue
--packets updates in its socket (whole rounds over a window of slots, round after round, as
workers in steady state send them), the server is resumed (SIGCONT) and the time until the
last result reaches the workers gives the server's packet rate, with the server, not this
Python load generator, the bottleneck. The best of --repeat drains counts;
all servers of one n run side by side and are drained in turn, so load drifts hit all alike.

In the same run the same drains go to a bare reflector: the switch's own I/O loop
(switch.io_udp.UdpIO) with the pipeline replaced by "send a result-sized reply to the
sender", i.e. the same syscalls per packet and no aggregation. The table gives update packets
per second, the ratio switch/reflector, the all-reduced elements per second (completed rounds
x elements per packet), NAT8's elements/s relative to INT32 at the same n and trace setting,
and the switch's peak RSS (VmHWM). Progress goes to stderr, the table to stdout.

Both servers move packets as the project does on loopback (nina.udp_batch): UDP_GRO receives
and UDP_SEGMENT sends grouped per destination, and the load generator sends each worker's
window of a round as one segmented send and receives with UDP_GRO, as the all-reduce client
does. The same switch and reflector also run with NINA_UDP_IO=mmsg (plain recvmmsg/sendmmsg,
one datagram per send from the load generator: the I/O before GRO/GSO) in the same run, so
the table shows the gain beside the figure issue 12 started from (97-111k updates/s).

BMv2 column (root, simple_switch_grpc on PATH, p4/build/nina.json compiled; else skipped with
the reason printed; --no-bmv2 skips it): BMv2 running the P4 program and the embedded switch in
interface mode, each in turn on a veth pair of its own (the embedded one on BMv2's), are driven by the same closed-loop load
(n workers behind one port, a window of slots, the next round of a slot sent when all n result
copies of the last one are back) of --bmv2-packets updates; the second table gives update
packets/s of both and the ratio BMv2/embedded, for INT32, NAT8 (results in two parts) and
NAT8 with C_M. --bmv2-perf PATH adds BMv2's performance build (a simple_switch_grpc built with
logging macros and the event logger off, -O3) as a third switch in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
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
sys.path.insert(0, str(REPO))  # run from a checkout

from bench import switch_ifaces  # noqa: E402
from bench.switch_load import Server, cpu_ns, log, make_sequence  # noqa: E402
from nina.p4spec import POOL_SLOTS  # noqa: E402
from nina.wire import (CAPACITY, FLAG_CM, UDP_PORT, Encoding, Header,  # noqa: E402
                       MsgType, headroom_shift, pack_packet, payload_layout, result_parts,
                       round_flags, round_of)

SOCK_BUF = 128 << 20   # socket buffers: a whole drain must fit in the server's queue


# ---------------------------------------------------------------- the reflector server

def serve_reflector(reply_bytes: int, replies: int) -> int:
    """The switch's batched I/O loop (switch.io_udp.UdpIO: recvmmsg in, sendmmsg out) with a
    pipeline that only answers the sender: `replies` packets of `reply_bytes` per update (as
    many as the switch sends: a NAT8 result without C_M comes in two parts), the update's
    header copied in. No aggregation, no tables: the bound the switch is held against."""
    from switch.io_udp import RX_ROWS, UdpIO
    from switch.kernel import N_REP_COLS, R_DIP, R_DPORT

    class Image:
        replicas = np.zeros((RX_ROWS * replies, N_REP_COLS), np.int64)

    class Reflector:
        trace = None
        out = np.zeros((RX_ROWS * replies, reply_bytes), np.uint8)
        out_len = np.full(RX_ROWS * replies, reply_bytes, np.int64)
        out_rep = np.arange(RX_ROWS * replies, dtype=np.int64)

        def process_batch(self, rx, rx_off, rx_len, rx_port, rx_ip, rx_udp, frame_len, n,
                          send):
            k = n * replies
            self.out[:k, :16] = np.repeat(rx[:n, :16], replies, axis=0)
            Image.replicas[:k, R_DIP] = np.repeat(rx_ip[:n], replies)
            Image.replicas[:k, R_DPORT] = np.repeat(rx_udp[:n], replies)
            send(self.out, self.out_len, self.out_rep, k, Image)

    io = UdpIO("127.0.0.1", 0, SOCK_BUF)
    signal.signal(signal.SIGINT, lambda *_: io.stop())
    signal.signal(signal.SIGTERM, lambda *_: io.stop())
    print(f"reflector listening on {io.describe()}; UDP batches {io.batching}", flush=True)
    io.run(Reflector())
    io.close()
    return 0


# ---------------------------------------------------------------- server processes



# ---------------------------------------------------------------- the load generator

def make_workers(n: int, gso: bool) -> tuple[list[socket.socket], list, list]:
    """n worker sockets with their batched receivers and senders (nina.udp_batch; gso=False:
    one datagram per send and plain recvmmsg, as workers did before GRO/GSO)."""
    from nina.udp_batch import BatchRx, BatchTx
    from switch.io_udp import set_buffers
    socks, rxs, txs = [], [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        set_buffers(s, SOCK_BUF)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
        rxs.append(BatchRx(s, 1024, 16, msgs=16, gro=gso))   # counted, not read: 16 bytes
        txs.append(BatchTx(s, 1024, gso=gso))
    return socks, rxs, txs






def drain(server: "Server", t: "Target", addr, per_update: int) -> tuple[float, float]:
    """Queue t's updates in the paused server, resume it; returns (update packets/s until the
    last result, server CPU seconds per update packet). Segmented sends (t.gso): worker w's window of
    each round in one send, as the client sends a window; else one datagram per send."""
    from nina.mmsg import MSG_DONTWAIT
    socks, seq = t.socks, t.seq
    poller = select.poll()
    rx_of = {}
    for s, rx in zip(socks, t.rxs):
        poller.register(s.fileno(), select.POLLIN)
        rx_of[s.fileno()] = rx
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        if t.gso:
            ip = int.from_bytes(socket.inet_aton(addr[0]), "big")
            win = t.window
            for r in range(len(t.wrows[0]) // win):
                idx = np.arange(r * win, (r + 1) * win)
                for w in range(t.n):
                    t.txs[w].send_rows(t.wrows[w], t.wrows[w].shape[1], win, ip, addr[1], idx)
        else:
            sends = [s.sendto for s in socks]
            for w, data in seq:
                sends[w](data, addr)
    finally:
        time.sleep(0.05)
        c0 = cpu_ns(server.proc.pid)
        t0 = time.perf_counter()
        os.kill(server.proc.pid, signal.SIGCONT)
    expected = len(seq) * per_update   # the switch and the reflector alike
    got, last = 0, t0
    while got < expected:
        events = poller.poll(2000)
        if not events:
            break           # results lost (buffers): rate over what arrived
        for fd, _ in events:
            rx = rx_of[fd]
            while True:
                m = rx.recv(MSG_DONTWAIT)
                if not m:
                    break
                while m:
                    got += m
                    m = rx.more()
        last = time.perf_counter()
    time.sleep(0.05)   # the trace writer's share of this drain's records: its CPU counts too
    cpu = (cpu_ns(server.proc.pid) - c0) * 1e-9
    if got < expected * 0.9:
        raise RuntimeError(f"only {got} of {expected} results came back")
    updates = got / per_update   # results come `per_update` to an update (NAT8: 2 parts)
    return updates / (last - t0), cpu / updates


# ---------------------------------------------------------------- BMv2 vs embedded on veths

FLAGS_AT = 14 + 20 + 8 + 3   # the NINA flags byte in an update frame
RESEND_AFTER = 0.2           # s without results before the load generator retransmits


def closed_loop(sw, port: int, n: int, enc: Encoding, cm: bool, window: int, packets: int,
                timeout: float = 120.0) -> float:
    """Updates/s of the switch behind sw's host-side veth: window slots kept busy, a slot's
    next round sent when all n copies (every part) of its result are back."""
    from switch.bmv2_harness import udp_frame
    from nina.config import SWITCH_MAC, mac_to_int
    rng = np.random.default_rng(2)
    cap = CAPACITY[enc]
    flags = FLAG_CM if cm else 0
    parts = result_parts(enc, flags)
    part_k = payload_layout(MsgType.RESULT, enc, flags).capacity
    m = 1 << headroom_shift(n)
    smac = mac_to_int(SWITCH_MAC)
    frames = {}
    for w in range(n):
        for slot in range(window):
            vals = rng.integers(0, 256, cap).astype(np.uint8) if enc == Encoding.NAT8 \
                else rng.integers(-m, m + 1, cap).astype(np.int32)
            data = pack_packet(Header(job=1, worker=w, encoding=enc, slot=slot, count=cap,
                                      exponent=120, offset=slot * cap), vals)
            frames[w, slot] = bytearray(udp_frame(smac, 0x020000000101 + w, f"10.9.0.{w + 1}",
                                                  "10.9.0.254", 41000 + w, UDP_PORT, data))
    rounds = max(2, packets // (window * n))
    nxt = [0] * window            # next round of each slot
    back = [set() for _ in range(window)]   # (worker, part) of the current round's result back
    whole = n * parts
    sent = done = 0

    def send_round(slot: int, resend: bool = False) -> None:
        nonlocal sent
        rnd = nxt[slot] - 1 if resend else nxt[slot]
        flags = round_flags(rnd)      # the round number rides in the flags byte
        for w in range(n):
            if resend and all((w, p) in back[slot] for p in range(parts)):
                continue
            f = frames[w, slot]
            f[FLAGS_AT] = flags
            sw.send(0, f)
            sent += 1
        if not resend:
            nxt[slot] += 1

    t0 = time.perf_counter()
    for slot in range(window):
        send_round(slot)
    deadline = t0 + timeout
    while done < rounds * window:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {done} of {rounds * window} rounds in {timeout:g} s")
        got = sw.receive(RESEND_AFTER)
        if not got:   # the switch dropped something (a full input queue): retransmit
            for slot in range(window):
                if len(back[slot]) < whole and nxt[slot] <= rounds:
                    send_round(slot, resend=True)
            continue
        for _, frame in got:
            if len(frame) < 42 + 16 or frame[34:36] != UDP_PORT.to_bytes(2, "big"):
                continue          # not a result (results leave from the NINA port)
            slot = int.from_bytes(frame[42 + 8:42 + 10], "big")
            if round_of(frame[FLAGS_AT]) != (nxt[slot] - 1) % 128:
                continue          # a late copy of an earlier round
            part = (int.from_bytes(frame[42 + 12:42 + 16], "big") - slot * cap) // part_k
            back[slot].add((frame[42 + 6], part))
            if len(back[slot]) == whole:
                back[slot] = set()
                done += 1
                if nxt[slot] < rounds:
                    send_round(slot)
                else:
                    nxt[slot] = rounds + 1   # finished
    return done * n / (time.perf_counter() - t0)   # useful updates, not retransmissions


BMV2_CASES = ((Encoding.INT32, False), (Encoding.NAT8, False), (Encoding.NAT8, True))


def embedded_ifaces(sw, spec) -> subprocess.Popen:
    """`nina switch --mode ifaces` on sw's switch-side veth, with the job installed."""
    with tempfile.TemporaryDirectory(prefix="ninabench") as tmp:
        jf = Path(tmp) / "jobs.json"
        jf.write_text(json.dumps([spec.to_dict()]))
        emb = subprocess.Popen(
            [sys.executable, "-m", "nina.cli", "switch", "--mode", "ifaces",
             "--ifaces", f"{sw.tag}s0", "--jobs", str(jf)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = emb.stdout.readline()   # the job file is read before this line
    if "listening" not in line:
        emb.kill()
        raise RuntimeError(f"embedded switch did not start: {line!r} {emb.stderr.read()}")
    return emb


def bmv2_rows(ns: list[int], args) -> list[tuple]:
    """(enc, cm, n, {switch: updates/s}) on one veth pair: BMv2 (and its performance build,
    with --bmv2-perf) and the embedded switch in interface mode, each in turn."""
    from nina.config import SWITCH_MAC, JobSpec, WorkerAddr
    from switch.bmv2_harness import BMV2_JSON, BMV2_P4INFO, Bmv2Switch
    from switch.controller import Controller
    builds = {"BMv2": "simple_switch_grpc"}
    if args.bmv2_perf:
        builds["BMv2 perf"] = args.bmv2_perf
    switches = {}
    rows = []
    try:
        for i, (name, binary) in enumerate(builds.items()):   # a veth pair each
            switches[name] = Bmv2Switch(1, binary=binary, tag_suffix="abc"[i])
        for name, sw in switches.items():   # only the switch under test sees the frames
            os.kill(sw.proc.pid, signal.SIGSTOP)
        for enc, cm in BMV2_CASES:
            for n in ns:
                def spec(port):
                    return JobSpec(1, n, enc, cm=cm, slot_count=args.window,
                                   switch_ip="10.9.0.254", switch_mac=SWITCH_MAC,
                                   workers=tuple(WorkerAddr(w, f"10.9.0.{w + 1}", 41000 + w,
                                                            port, f"02:00:00:00:01:{w + 1:02x}")
                                                 for w in range(n)))
                what = f"{enc.name}{'+C_M' if cm else ''} n={n}"
                rates = {}
                for name, sw in switches.items():
                    log(f"{name} {what}: {args.bmv2_packets} updates")
                    os.kill(sw.proc.pid, signal.SIGCONT)
                    try:
                        with Controller(sw.grpc_addr, str(BMV2_P4INFO), str(BMV2_JSON),
                                        thrift_port=sw.thrift_port, connect_timeout=30) as ctl:
                            for old in ctl.show_jobs():
                                ctl.remove_job(old.job_id)
                            ctl.install_job(spec(0))
                            rates[name] = closed_loop(sw, 0, n, enc, cm, args.window,
                                                      args.bmv2_packets)
                            ctl.remove_job(1)
                    finally:
                        os.kill(sw.proc.pid, signal.SIGSTOP)
                log(f"embedded (interface mode) {what}")
                sw = next(iter(switches.values()))
                emb = embedded_ifaces(sw, spec(1))   # interface mode numbers ports from 1
                try:
                    rates["embedded"] = closed_loop(sw, 0, n, enc, cm, args.window,
                                                    args.bmv2_packets)
                finally:
                    emb.send_signal(signal.SIGINT)
                    emb.communicate(timeout=30)
                rows.append((enc, cm, n, rates))
    finally:
        for sw in switches.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(sw.proc.pid, signal.SIGCONT)
            sw.close()
    return rows


# ---------------------------------------------------------------- runs

class Target:
    """One server under test (reflector, switch, or the switch of another checkout: --before)
    with its own worker sockets and updates."""

    def __init__(self, kind: str, n: int, enc: Encoding, cm: bool, trace: bool, args,
                 tmp: Path, io: str = "gso"):
        self.kind, self.n, self.enc, self.cm, self.trace = kind, n, enc, cm, trace
        self.io, self.gso, self.window = io, io == "gso", args.window
        self.socks, self.rxs, self.txs = make_workers(n, self.gso)
        self.seq = make_sequence(n, enc, args.window, args.packets)
        # each worker's updates as rows, in sequence order (round-major, slot-minor)
        self.wrows = [np.array([np.frombuffer(d, np.uint8) for w2, d in self.seq if w2 == w])
                      for w in range(n)]
        self.rates: list[float] = []
        self.cpus: list[float] = []
        ports = [s.getsockname()[1] for s in self.socks]
        name = f"{kind}-{io}-{enc.name}-{int(cm)}-{n}-{int(trace)}"
        flags = FLAG_CM if cm else 0
        self.parts = result_parts(enc, flags)   # result packets per update, switch and reflector
        if kind == "reflector":
            reply = 16 + payload_layout(MsgType.RESULT, enc, flags).nbytes   # the switch's result
            cmd = [sys.executable, __file__, "--serve-reflector", "--reply-bytes", str(reply),
                   "--replies", str(self.parts)]
            self.server = Server(cmd, io=io)
            return
        jobs = [{"job_id": 1, "n_workers": n, "encoding": enc.name, "cm": cm,
                 "slot_count": args.window,
                 "workers": [{"wid": w, "ip": "127.0.0.1", "udp_port": p}
                             for w, p in enumerate(ports)]}]
        (tmp / f"{name}.json").write_text(json.dumps(jobs))
        cmd = [sys.executable, "-m", "nina.cli", "switch", "--mode", "local", "--listen",
               "127.0.0.1:0", "--jobs", str(tmp / f"{name}.json"),
               "--socket-buffer", str(SOCK_BUF)]
        if trace:
            cmd += ["--trace", str(tmp / f"{name}.trace")]
        self.server = Server(cmd, Path(args.before) if kind == "before" else REPO, io)

    def drain(self) -> None:
        rate, cpu = drain(self.server, self, self.server.addr, self.parts)
        self.rates.append(rate)
        self.cpus.append(cpu)

    @property
    def pps(self) -> float:
        return max(self.rates)

    def stop(self) -> dict:
        rss = self.server.peak_rss_mib()
        out = self.server.stop()
        for s in self.socks:
            s.close()
        if self.kind != "reflector" and "COMPLETE" not in out:
            raise RuntimeError(f"the switch completed no round:\n{out}")
        return {"pps": self.pps, "cpu": min(self.cpus), "rss": rss}


VARIANTS = ((Encoding.INT32, False), (Encoding.NAT8, False), (Encoding.NAT8, True))
IO_MODES = ("gso", "mmsg")   # NINA_UDP_IO of the servers (and the load generator's sends)
TODAY_KPPS = 111.0           # issue 12's starting point: 97-111k updates/s; the top one


def run_n(n: int, args, tmp: Path) -> list[tuple]:
    """All servers for one n, drained in turn `repeat` times: load drifts hit all alike."""
    targets = []
    try:
        for enc, cm in VARIANTS:
            for io in IO_MODES:
                targets.append(Target("reflector", n, enc, cm, False, args, tmp, io))
                for trace in (False, True):
                    targets.append(Target("switch", n, enc, cm, trace, args, tmp, io))
            if args.before:
                targets.append(Target("before", n, enc, cm, False, args, tmp, "mmsg"))
        for rep in range(args.repeat):
            log(f"n={n}: drain {rep + 1}/{args.repeat} of {len(targets)} servers "
                f"({len(targets[0].seq)} updates each)")
            for t in targets:
                t.drain()
    finally:
        results = [(t, t.stop()) for t in targets]
    rows = []
    for enc, cm in VARIANTS:
        mine = [(t, r) for t, r in results if t.enc == enc and t.cm == cm]
        ref = next(r for t, r in mine if t.kind == "reflector" and t.io == "gso")
        ref_m = next(r for t, r in mine if t.kind == "reflector" and t.io == "mmsg")
        before = next((r for t, r in mine if t.kind == "before"), None)
        for t, r in mine:
            if t.kind == "switch" and t.io == "gso":
                mm = next(r2 for t2, r2 in mine if t2.kind == "switch" and t2.io == "mmsg"
                          and t2.trace == t.trace)
                rows.append((enc, cm, n, t.trace, r, ref, before, mm, ref_m))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=20000, help="updates per drain")
    ap.add_argument("--repeat", type=int, default=5, help="drains per server (best counts)")
    ap.add_argument("--window", type=int, default=32, help="slots per round")
    ap.add_argument("--workers", default="2,4,8", help="values of n")
    ap.add_argument("--no-bmv2", action="store_true",
                    help="skip the BMv2-vs-embedded table on veths")
    ap.add_argument("--bmv2-packets", type=int, default=3000,
                    help="updates per switch in the BMv2 table")
    ap.add_argument("--before", metavar="CHECKOUT",
                    help="also measure the switch of another checkout of this project (e.g. "
                         "the main branch before a change), same run, same load")
    ap.add_argument("--serve-reflector", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reply-bytes", type=int, default=272, help=argparse.SUPPRESS)
    ap.add_argument("--replies", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--bmv2-perf", metavar="PATH",
                    help="also measure this simple_switch_grpc (BMv2's performance build)")
    ap.add_argument("--modes", default="local,ifaces",
                    help="tables to measure: local (loopback UDP), ifaces (raw veth "
                         "interfaces, rings vs mmsg; root, bench/switch_ifaces.py)")
    switch_ifaces.add_args(ap)
    args = ap.parse_args()
    if args.serve_reflector:
        return serve_reflector(args.reply_bytes, args.replies)
    if args.before and not (Path(args.before) / "nina" / "cli.py").is_file():
        ap.error(f"--before {args.before}: not a checkout of this project (no nina/cli.py)")
    try:
        ns = [int(x) for x in args.workers.split(",")]
    except ValueError:
        ap.error(f"--workers wants a comma list of integers, got {args.workers!r}")
    if args.bmv2_perf and not os.access(args.bmv2_perf, os.X_OK):
        ap.error(f"--bmv2-perf {args.bmv2_perf}: not an executable file")
    if any(not 1 <= n <= 32 for n in ns):
        ap.error("--workers values must be in 1..32")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"local", "ifaces"}:
        ap.error(f"--modes wants a comma list of local, ifaces; got {args.modes!r}")
    if "local" not in modes:
        switch_ifaces.run(args)
        return 0
    if os.geteuid() != 0:
        rmem = int(Path("/proc/sys/net/core/rmem_max").read_text())
        fit = 2 * rmem // 1400
        if args.packets > fit:
            log(f"not root: socket buffers capped by net.core.rmem_max={rmem}; "
                f"--packets lowered to {fit}")
            args.packets = fit

    rows = []
    with tempfile.TemporaryDirectory(prefix="ninabench") as tmpdir:
        for n in ns:
            rows += run_n(n, args, Path(tmpdir))
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))

    def enc_name(enc, cm):
        return enc.name + ("+C_M" if cm else "")

    cap_eps = {(enc, cm, n, t): CAPACITY[enc] / n / sw["cpu"]
               for enc, cm, n, t, sw, *_ in rows}
    print(f"embedded switch, loopback UDP drains of {args.packets} updates (best of "
          f"{args.repeat}), window {args.window}; {os.cpu_count()} cores, "
          f"load avg {os.getloadavg()[0]:.1f}")
    hdr = (f"{'enc':<10}{'n':>3}{'trace':>6}{'kpps':>8}{'refl kpps':>10}{'ratio':>7}"
           f"{'us/pkt':>8}{'refl us':>9}{'cpu ratio':>10}"
           f"{'mmsg kpps':>10}{'mmsg refl':>10}{'mmsg us':>8}{'x mmsg':>8}{'x issue':>8}"
           f"{'Melem/s':>9}{'vs INT32':>9}{'RSS MiB':>9}"
           + (f"{'before kpps':>12}{'x before':>9}" if args.before else ""))
    print(hdr)
    print("-" * len(hdr))
    for enc, cm, n, trace, sw, ref, before, mm, ref_m in rows:
        e = cap_eps[enc, cm, n, trace]
        line = (f"{enc_name(enc, cm):<10}{n:>3}{'on' if trace else 'off':>6}"
                f"{sw['pps'] / 1e3:>8.1f}"
                f"{ref['pps'] / 1e3:>10.1f}{sw['pps'] / ref['pps']:>7.2f}"
                f"{sw['cpu'] * 1e6:>8.2f}{ref['cpu'] * 1e6:>9.2f}{ref['cpu'] / sw['cpu']:>10.2f}"
                f"{mm['pps'] / 1e3:>10.1f}{ref_m['pps'] / 1e3:>10.1f}{mm['cpu'] * 1e6:>8.2f}"
                f"{sw['pps'] / mm['pps']:>7.1f}x{sw['pps'] / 1e3 / TODAY_KPPS:>7.1f}x"
                f"{sw['pps'] / n * CAPACITY[enc] / 1e6:>9.2f}"
                f"{e / cap_eps[Encoding.INT32, False, n, trace]:>8.2f}x{sw['rss']:>9.1f}")
        if args.before and before is not None:
            line += f"{before['pps'] / 1e3:>12.1f}{sw['pps'] / before['pps']:>8.1f}x"
        print(line)
    print("kpps: update packets/s through the server, wall clock, with UDP_GRO receives and "
          "UDP_SEGMENT sends (nina.udp_batch)\non both sides; refl: the reflector (the same "
          "I/O loop and load, the switch's result packets per update: 2 parts\nfor NAT8 "
          "without C_M); us/pkt: server CPU time per update (all its threads, the trace "
          "writer's too,\n/proc/PID/task/*/schedstat), robust to load from other processes;\n"
          "cpu ratio: reflector/switch CPU per update = capacity ratio on an idle core;\n"
          "mmsg: the same switch and reflector with NINA_UDP_IO=mmsg (recvmmsg/sendmmsg, one "
          "datagram per send: the I/O\nbefore GRO/GSO), same run, same trace setting; x mmsg: "
          f"kpps over mmsg kpps; x issue: kpps over {TODAY_KPPS:.0f}k, the top\nof issue 12's "
          "starting figures (97-111k); Melem/s: all-reduced elements/s (rounds x elements "
          "per packet);\nvs INT32: elements per CPU-second of the switch relative to INT32, "
          "same n and trace; RSS: peak resident set\n(VmHWM) of the switch process, default "
          f"pool of {POOL_SLOTS} slots."
          + ("\nbefore: the switch of the checkout --before (traces off, one datagram per "
             "send), same run." if args.before else ""))
    if "ifaces" in modes:
        switch_ifaces.run(args)
    if args.no_bmv2:
        return 0
    from switch.bmv2_harness import bmv2_unavailable
    why = bmv2_unavailable()
    if why:
        print(f"\nBMv2 table skipped: {why}")
        return 0
    brows = bmv2_rows(ns, args)
    names = list(brows[0][3])
    print(f"\nBMv2 (p4/build/nina.json) vs embedded switch in interface mode, veth pairs, "
          f"closed loop of {args.bmv2_packets} updates, window {args.window}")
    hdr = f"{'enc':<10}{'n':>3}" + "".join(f"{k + ' upd/s':>17}" for k in names) + \
        "".join(f"{k + '/emb':>15}" for k in names if k != "embedded")
    print(hdr)
    print("-" * len(hdr))
    for enc, cm, n, rates in brows:
        print(f"{enc.name + ('+C_M' if cm else ''):<10}{n:>3}"
              + "".join(f"{rates[k]:>17.0f}" for k in names)
              + "".join(f"{rates[k] / rates['embedded']:>15.3f}" for k in names
                        if k != "embedded"))
    print("upd/s: update packets/s (wall clock) through the switch; every switch gets the same "
          "frames from the same load\ngenerator; traces off. BMv2 perf: the performance build "
          "(--bmv2-perf).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
