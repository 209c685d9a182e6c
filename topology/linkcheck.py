"""Measuring a running Mininet rack's links from the rack process (topology/linkprobe.py in the
hosts), with the statistics that say how far a measurement can be trusted.

bench/links.py (the configured-vs-measured table) and tests/test_links_rack.py (the bounds a
regression must not cross) both use it, so they measure the same way.
"""
from __future__ import annotations

import json
import math
import re
import statistics
import subprocess

from nina.procs import REPO
from topology.runenv import project_python

BASE_PORT = 47000
Z95 = 1.959964


class ProbeError(RuntimeError):
    """A probe process failed; the message has its output."""


def _probe(node, args: list[str]) -> subprocess.Popen:
    return node.popen([project_python(), "-m", "topology.linkprobe", *args],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _ready(p: subprocess.Popen, what: str) -> None:
    line = p.stdout.readline().strip()
    if line != "ready":
        raise ProbeError(f"{what} did not start: {line} {p.stderr.read()[-400:]}")


def _result(p: subprocess.Popen, what: str, timeout: float) -> dict:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise ProbeError(f"{what} timed out: {err[-400:]}") from None
    lines = out.strip().splitlines()
    if p.returncode or not lines:
        raise ProbeError(f"{what} failed (rc {p.returncode}): {err[-400:]}")
    return json.loads(lines[-1])


def udp_rtt(net, src: str, dst: str, dst_ip: str, count: int = 200,
            interval: float = 0.01, port: int = BASE_PORT) -> list[float]:
    """RTTs (ms) of UDP probes from node src to an echo server on node dst, measured by the
    prober's own clock (what an application sees)."""
    wait = 1.0
    echo = _probe(net.get(dst), ["echo", "--port", str(port),
                                 "--seconds", str(count * interval + wait + 3)])
    try:
        _ready(echo, "udp echo")
        r = _result(_probe(net.get(src), ["rtt", "--dst", dst_ip, "--port", str(port),
                                          "--count", str(count), "--interval", str(interval),
                                          "--wait", str(wait)]),
                    "udp rtt", count * interval + wait + 20)
    finally:
        echo.kill()
        echo.wait()
    return r["rtt_ms"]


def ping_rtt(net, src: str, dst_ip: str, count: int = 200, interval: float = 0.01) -> list[float]:
    """RTTs (ms) as ping reports them (the kernel's receive timestamps)."""
    out = net.get(src).cmd(f"ping -n -c {count} -i {interval} -W 2 {dst_ip}")
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


def udp_stream(net, src: str, dst: str, dst_ip: str, mbit: float, seconds: float = 0.0,
               count: int = 0, size: int | None = None, warmup: float = 0.0,
               steady: bool = False, port: int = BASE_PORT + 1) -> dict:
    """A paced datagram stream src -> dst; the sink's report plus the sender's `sent`."""
    sink = _probe(net.get(dst), ["sink", "--port", str(port), "--warmup", str(warmup),
                                 "--seconds", str(max(seconds, 1.0) + 120), "--idle", "1.5"])
    try:
        _ready(sink, "udp sink")
        args = ["blast", "--dst", dst_ip, "--port", str(port), "--mbit", str(mbit),
                "--seconds", str(seconds), "--count", str(count)]
        if size:
            args += ["--size", str(size)]
        if steady:
            args.append("--steady")
        sent = _result(_probe(net.get(src), args), "udp blast", seconds + count / 100 + 60)
        r = _result(sink, "udp sink", 30)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    r.update(sent=sent["sent"], send_errors=sent["send_errors"])
    return r


def tcp_bulk(net, src: str, dst: str, dst_ip: str, seconds: float, warmup: float,
             port: int = BASE_PORT + 2) -> list[float]:
    """Goodput samples (Mbit/s of TCP payload per 0.5 s) of one bulk flow src -> dst."""
    sink = _probe(net.get(dst), ["tcp-sink", "--port", str(port), "--warmup", str(warmup),
                                 "--seconds", "30"])
    try:
        _ready(sink, "tcp sink")
        _result(_probe(net.get(src), ["tcp-send", "--dst", dst_ip, "--port", str(port),
                                      "--seconds", str(seconds)]), "tcp send", seconds + 60)
        r = _result(sink, "tcp sink", 30)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return r["goodput_mbit"]


# ---- statistics ----------------------------------------------------------------------------

def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def binomial_ok(k: int, n: int, p: float, sigmas: float) -> bool:
    """Is k of n consistent with rate p within `sigmas` standard deviations?"""
    return abs(k - n * p) <= sigmas * math.sqrt(max(n * p * (1 - p), 1e-12)) + 1


def median_ci(xs: list[float]) -> tuple[float, float, float]:
    """Median and its 95% distribution-free interval (order statistics)."""
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return math.nan, math.nan, math.nan
    half = Z95 * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    return statistics.median(s), s[lo], s[hi]


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval (normal approximation)."""
    if not xs:
        return math.nan, math.nan
    if len(xs) == 1:
        return xs[0], math.nan
    return statistics.fmean(xs), Z95 * statistics.stdev(xs) / math.sqrt(len(xs))


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return math.nan
    i = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[i]
