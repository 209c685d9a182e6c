"""Start and stop a Mininet rack: worker namespaces, veth links, the NINA switch, its control.

start(): remove leftovers of a crashed rack (ours only), build the Mininet network without any
OpenFlow controller, turn checksum/segmentation offloads off on every rack interface (the
switch copies frames between veths with raw sockets, so a frame must leave a host complete,
with its real checksum and at most MTU-sized; on links that only shape bandwidth the embedded
switch takes GSO frames whole instead, and _pass_gso turns GSO back on), static ARP everywhere (the switch forwards by
MAC and floods nothing), start the switch process on s1's interfaces, bridge each worker link's
link node and apply the link settings (topology/impair.py),
connect the Controller over loopback gRPC and install one l2_forward entry per host. A BMv2
switch with tracing on also gets a monitor port (topology/monitor.py): the controller points
the trace clone session at it and a collector writes <run dir>/switch.trace from it.
stop(): the reverse, also after an error, Ctrl-C or SIGTERM; every step is safe to repeat.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from functools import partial

from dataclasses import replace

from nina.config import DEFAULT_WINDOW, SWITCH_MAC, SWITCH_RACK_IP
from nina.rackinfo import OWNER_ELECTION_ID
from nina.wire import UDP_PORT
from topology import impair
from topology.impair import Impairments, LinkShape
from topology.monitor import MonitorError, TraceMonitor
from topology.netns import coordinator_in_host
from topology.rack import COORD_NAME, HostPlan, SWITCH_NAME, make_topo, rack_plan
from topology.rackbase import RackBase, RackController, RackError
from nina.procs import REPO, die_with_parent, free_port, stop_pid
from topology.runenv import clean_leftovers, default_run_dir

from nina.p4build import BMV2_JSON_PATH, P4INFO_PATH  # noqa: F401 (tests read them here)

OFFLOADS_OFF = impair.OFFLOADS_OFF
GSO_PASS = ["tx", "on", "sg", "on", "gso", "on", "tx-udp-segmentation", "on"]
RESULTS_PER_GSO = 15          # the switch's --tx-gso on links that only shape bandwidth
# BMv2 runs this program at a few hundred updates/s and queues everything (the coordination TCP
# too) in one FIFO: 32 slots per worker in flight build seconds of queue when the CPU is shared,
# the clients' retransmissions pile onto it and heartbeats time out. 8 keeps the queue short.
BMV2_WINDOW = 8
# The embedded switch's rack: a window must outlast a round trip, which on shaped links
# includes every process's wait for one of the machine's shared cores. 32 slots of NAT8+C_M
# updates are 0.8 ms of a 100 Mbit/s link; 64 (every slot of the job's range) kept the link
# busy: 4 workers 0.59 -> 0.51 s (link-bound 0.41), 8 workers 1.39 -> 0.94 s (bench/REPORT.md).
EMBEDDED_WINDOW = 2 * DEFAULT_WINDOW


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _remove_stale_intfs(plans: list[HostPlan], log) -> None:
    """Interfaces with our nodes' names left in the root namespace by a crash."""
    names = [h.switch_intf for h in plans] + [h.host_intf for h in plans] + \
        list(TraceMonitor.intfs)
    stale = [n for n in names if os.path.exists(f"/sys/class/net/{n}")]
    for n in stale:
        _run(["ip", "link", "del", n])
    if stale:
        log(f"removed stale interfaces: {', '.join(stale)}")


class MininetRack(RackBase):
    mode = "mininet"

    def __init__(self, n_workers: int = 4, shape: LinkShape = LinkShape(),
                 switch_kind: str = "embedded", run_dir: str | None = None,
                 trace: bool = True, pcap: bool = False, log=print, switch_cls=None):
        super().__init__(n_workers, run_dir or default_run_dir(), log)
        shape.validate()
        self.plans = rack_plan(n_workers)
        self.shape = shape
        self.switch_kind = switch_kind
        self.default_window = BMV2_WINDOW if switch_kind == "bmv2" else EMBEDDED_WINDOW
        # Results leave the embedded switch as GSO frames that stay whole down to the worker's
        # UDP_GRO socket, one wake-up and one trip through the kernel for up to RESULTS_PER_GSO
        # results, on links whose shaping counts bytes only (HTB accounts a GSO frame's every
        # datagram and header). A link node that drops, duplicates or delays frames gets them
        # one by one (the switch port cuts them): its loss must hit datagrams, not bursts.
        self.tx_gso = RESULTS_PER_GSO if switch_kind == "embedded" and not shape.impaired else 1
        self.trace = trace
        self.pcap = pcap
        self.switch_cls = switch_cls
        self.net = None
        self.switch = None
        self.impairments = Impairments(shape, log)
        self.grpc_addr = ""
        self.data_addr = (SWITCH_RACK_IP, UDP_PORT)
        self.coord_ip = self.plans[-1].ip
        self._pcaps: list[subprocess.Popen] = []
        # BMv2 writes no trace file itself: with tracing on, it gets a monitor port
        self.monitor = TraceMonitor(self.run_dir, log) if (switch_kind == "bmv2"
                                                           and trace) else None
        self._stopped = False

    # ---- RackBase ----
    def worker_ip(self, wid: int) -> str:
        return self.plans[wid].ip

    def coordinator_factory(self):
        return coordinator_in_host(self.net.get(COORD_NAME).pid, self.coord_ip)

    def store_context(self):
        from topology.netns import in_netns
        return in_netns(self.net.get(COORD_NAME).pid)

    def host_ifname(self, wid: int) -> str:
        return self.plans[wid].host_intf

    def _spawn(self, node: str, cmd: list[str], log) -> subprocess.Popen:
        env = None
        if self.tx_gso > 1:   # the uplinks cut segmented sends too (_pass_gso)
            from nina.udp_batch import SEGMENT_ENV
            env = {**os.environ, SEGMENT_ENV: "any"}
        return self.net.get(node).popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=REPO, env=env)

    def switch_alive(self) -> bool:
        return self.switch is not None and self.switch.alive()

    # ---- lifecycle ----
    def start(self) -> None:
        from mininet.link import Link
        from mininet.log import setLogLevel
        from mininet.net import Mininet

        from topology.switch_node import NinaSwitch, bmv2_missing_reason

        if self.switch_kind == "bmv2" and bmv2_missing_reason():
            raise RackError(bmv2_missing_reason())
        for path, what in ((P4INFO_PATH, "P4Info"), (BMV2_JSON_PATH, "BMv2 JSON")):
            if (what == "P4Info" or self.switch_kind == "bmv2") and not os.path.exists(path):
                raise RackError(f"{what} {path} is missing (p4c output of p4/nina.p4: make p4)")
        self._install_signals()
        setLogLevel("warning")
        os.makedirs(self.run_dir, exist_ok=True)
        try:
            clean_leftovers(log=self.log)
        except RuntimeError as e:
            raise RackError(str(e)) from None
        impair.remove_leftovers()
        _remove_stale_intfs(self.plans, self.log)
        self.state.intfs = [h.switch_intf for h in self.plans] + [h.host_intf
                                                                    for h in self.plans]
        if self.monitor:
            self.state.intfs += list(self.monitor.intfs)
        self.state.save()

        t0 = time.monotonic()
        self.log(f"starting a Mininet rack: {self.n_workers} workers + coordinator, switch "
                 f"{self.switch_kind}, links: {self.shape.describe()}; run dir {self.run_dir}")
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        cls = self.switch_cls or NinaSwitch
        switch = partial(cls, kind=self.switch_kind, grpc_addr=self.grpc_addr,
                         run_dir=self.run_dir, trace=self.trace,
                         thrift_port=free_port(), on_spawn=self.state.add_pid,
                         tx_gso=self.tx_gso, rx_gso=self.tx_gso > 1,
                         monitor_intf=self.monitor.switch_intf if self.monitor else None)
        self.net = Mininet(topo=make_topo(self.n_workers), switch=switch,
                           controller=None, link=Link,
                           autoSetMacs=False, autoStaticArp=False, build=False)
        try:
            self.net.build()
        except Exception as e:
            raise RackError(f"building the Mininet network failed: {e}") from None
        for node in self.net.hosts + self.net.switches:
            if node.pid:
                self.state.add_pid(node.pid)
        self.switch = self.net.get(SWITCH_NAME)
        self._configure_interfaces()
        self._static_arp()
        try:
            if self.monitor:
                self.monitor.create_link()
                self.state.add_pid(self.monitor.start_capture(), self.monitor.cmd)
            self.net.start()  # runs NinaSwitch.start: the switch process, waits for its gRPC
            self.impairments.apply(self.net, self.plans[:-1], self.run_dir)
            if self.tx_gso > 1:
                self._pass_gso()
        except (RuntimeError, MonitorError) as e:
            raise RackError(str(e)) from None
        finally:
            for pid, cmd in self.impairments.started():
                self.state.add_pid(pid, cmd)
        if self.pcap:
            self._start_pcaps()
        self._connect_controller()
        # clones first: a frame forwarded before the clone session exists is counted but never
        # traced (BMv2 forwarded the hosts' first frames in that gap: trace 4 short of FORWARDED)
        self._point_trace_clones()
        self._install_forwarding()
        self.log(f"rack up in {time.monotonic() - t0:.1f} s: switch pid {self.switch.proc.pid}"
                 f", P4Runtime {self.grpc_addr}, data plane {SWITCH_RACK_IP}:{UDP_PORT}"
                 + (f", impairments via {self.impairments.method}"
                    if self.impairments.method != "none" else "")
                 + (f"; BMv2: jobs use a window of {self.default_window} slots per worker "
                    f"unless given --window" if self.switch_kind == "bmv2" else "")
                 + (f"; trace clones on port {self.switch.monitor_port} -> "
                    f"{self.monitor.trace_path}" if self.monitor else ""))

    def _connect_controller(self) -> None:
        from switch.controller import Controller, ControllerError
        bmv2 = self.switch_kind == "bmv2"
        try:
            ctl = Controller(self.grpc_addr, P4INFO_PATH, BMV2_JSON_PATH if bmv2 else None,
                             push="always" if bmv2 else "auto", connect_timeout=15.0,
                             election_id=OWNER_ELECTION_ID,
                             thrift_port=self.switch.thrift_port if bmv2 else None)
        except ControllerError as e:
            raise RackError(f"controller: {e}") from None
        self.controller = RackController(ctl, self._complete_spec)

    def _install_forwarding(self) -> None:
        """One l2_forward entry per host: plain frames (ping, the coordinator's TCP) go to
        the port of their destination MAC."""
        from switch.controller import ControllerError
        try:
            for h in self.plans:
                self.controller.set_forward(h.mac, h.port)
        except ControllerError as e:
            raise RackError(f"installing forwarding: {e}") from None

    def _point_trace_clones(self) -> None:
        """Tracing on BMv2 is the trace clone session aimed at the monitor port; without it
        (--no-trace) BMv2 makes no clones at all."""
        if not self.monitor:
            return
        from switch.controller import ControllerError
        try:
            self.controller.set_monitor_port(self.switch.monitor_port)
        except ControllerError as e:
            raise RackError(f"pointing trace clones at the monitor port: {e}") from None

    def _complete_spec(self, spec):
        """jobs/runner.py knows a worker by IP and UDP port; the switch also needs its port
        and MAC (admission, egress rewrite), and answers from the rack's switch address."""
        from switch.controller import ControllerError
        by_ip = {h.ip: h for h in self.plans}
        workers = []
        for w in spec.workers:
            h = by_ip.get(w.ip)
            if h is None:
                raise ControllerError(f"job {spec.job_id}: worker {w.wid} at {w.ip} is not a "
                                      f"host of this rack")
            workers.append(replace(w, port=h.port, mac=h.mac))
        return replace(spec, workers=tuple(workers), switch_ip=SWITCH_RACK_IP,
                       switch_mac=SWITCH_MAC)

    def _configure_interfaces(self) -> None:
        for h in self.plans:
            host = self.net.get(h.name)
            out = host.cmd(f"ethtool -K {h.host_intf} {' '.join(OFFLOADS_OFF)} >/dev/null 2>&1;"
                           f" ethtool -k {h.host_intf} | grep -c '^tx-checksumming: off'")
            if out.strip() != "1":
                raise RackError(f"could not turn TX checksum offload off on {h.host_intf}")
            # No IPv6 chatter through the switch. The host's TCP is left stock: link delay
            # happens in the link node, not in the host's stack (topology/impair.py).
            host.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                     "net.ipv6.conf.default.disable_ipv6=1")
            r = _run(["ethtool", "-K", h.switch_intf] + OFFLOADS_OFF)
            if r.returncode and "Could not change any" in r.stderr:
                raise RackError(f"ethtool on {h.switch_intf}: {r.stderr.strip()}")
            _run(["sysctl", "-qw", f"net.ipv6.conf.{h.switch_intf}.disable_ipv6=1"])

    def _pass_gso(self) -> None:
        """Let GSO frames through without being cut, both ways: the switch's towards a worker
        (the switch port and the link node's port facing the host), and a worker's segmented
        sends (the worker's processes get NINA_UDP_SEGMENT_TO=any) out of its host and
        through the link node's port towards the switch, whose receive rings take them whole
        (`nina switch --rx-gso`) and cut them into datagrams. TSO stays off everywhere, so
        TCP crosses in MSS-sized segments; its checksums, left to the offload, the switch
        completes as it forwards."""
        flags = " ".join(GSO_PASS)
        for h in self.plans[:-1]:
            r = _run(["ethtool", "-K", h.switch_intf] + GSO_PASS)
            out = self.net.get(h.link_node).cmd(
                f"for d in {h.link_host_intf} {h.link_switch_intf}; do "
                f"ethtool -K $d {flags} >/dev/null 2>&1; echo $?; done")
            out += self.net.get(h.name).cmd(
                f"ethtool -K {h.host_intf} {flags} >/dev/null 2>&1; echo $?")
            if r.returncode or out.split() != ["0", "0", "0"]:
                raise RackError(f"ethtool: cannot turn on {flags} on {h.switch_intf}, "
                                f"{h.link_host_intf}, {h.link_switch_intf} or {h.host_intf}: "
                                f"{r.stderr.strip()}")

    def _static_arp(self) -> None:
        peers = [(h.ip, h.mac) for h in self.plans] + [(SWITCH_RACK_IP, SWITCH_MAC)]
        for h in self.plans:
            host = self.net.get(h.name)
            cmds = [f"ip neigh replace {ip} lladdr {mac} dev {h.host_intf} nud permanent"
                    for ip, mac in peers if ip != h.ip]
            host.cmd("; ".join(cmds))

    def _start_pcaps(self) -> None:
        d = os.path.join(self.run_dir, "pcap")
        os.makedirs(d, exist_ok=True)
        for h in self.plans:
            path = os.path.join(d, f"{h.switch_intf}.pcap")
            cmd = ["tcpdump", "-Z", "root", "-i", h.switch_intf, "-U", "-n", "-s", "2048",
                   "-w", path]
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True, preexec_fn=die_with_parent)
            self._pcaps.append(p)
            self.state.add_pid(p.pid, cmd)
        deadline = time.monotonic() + 10
        for h in self.plans:
            path = os.path.join(d, f"{h.switch_intf}.pcap")
            while time.monotonic() < deadline and not (os.path.exists(path)
                                                        and os.path.getsize(path) >= 24):
                time.sleep(0.05)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        errors = []
        # the collector stops after the switch: every clone BMv2 sent is in its socket by then
        for step in (self._reap_all, self.close_controller, self._stop_pcaps,
                     self.impairments.teardown, self._stop_switch, self._stop_monitor,
                     self._stop_net):
            try:
                step()
            except Exception as e:          # keep tearing down; report at the end
                errors.append(f"{step.__name__}: {type(e).__name__} {e}")
        _remove_stale_intfs(self.plans, lambda *_: None)
        self.state.remove()
        self._restore_signals()
        if errors:
            self.log("teardown problems: " + "; ".join(errors))

    def _stop_pcaps(self) -> None:
        for p in self._pcaps:
            stop_pid(p.pid)
        self._pcaps.clear()

    def _stop_switch(self) -> None:
        if self.switch is not None:
            self.switch.stop_process()

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def _stop_net(self) -> None:
        if self.net is None:
            return
        net, self.net = self.net, None
        nodes = net.hosts + net.switches
        try:
            # A node interrupted in the middle of a shell command (Ctrl-C, SIGTERM) cannot run
            # Mininet's orderly stop; its shell is ended below, which removes its namespace.
            if not any(n.waiting for n in nodes):
                net.stop()
        finally:
            for n in nodes:
                if n.shell is not None and n.shell.poll() is None:
                    stop_pid(n.shell.pid)
                    n.shell.poll()
            deadline = time.monotonic() + 10      # namespaces die asynchronously
            names = [h.switch_intf for h in self.plans]
            while time.monotonic() < deadline and any(
                    os.path.exists(f"/sys/class/net/{x}") for x in names):
                time.sleep(0.05)

    # ---- interactive helpers ----
    def hosts_text(self) -> str:
        rows = [f"{'node':5} {'ip':12} {'mac':18} {'switch port'}"]
        for h in self.plans:
            rows.append(f"{h.name:5} {h.ip:12} {h.mac:18} {h.port} ({h.switch_intf})")
        rows.append(f"{SWITCH_NAME:5} {SWITCH_RACK_IP:12} {SWITCH_MAC:18} "
                    f"({self.switch_kind}, pid {self.switch.proc.pid if self.switch_alive() else '-'})")
        if self.monitor and self.switch.monitor_port:
            rows.append(f"{'mon':5} {'-':12} {'-':18} {self.switch.monitor_port} "
                        f"({self.switch.monitor_intf}: trace clones -> {self.monitor.trace_path})")
        return "\n".join(rows)

    def pingall(self, timeout: float = 1.0) -> tuple[int, int]:
        """(answered, tried) pings between every ordered pair of hosts."""
        if shutil.which("ping") is None:
            raise RackError("`ping` is not installed (apt-get install iputils-ping)")
        ok = tried = 0
        for a in self.plans:
            for b in self.plans:
                if a is b:
                    continue
                tried += 1
                out = self.net.get(a.name).cmd(f"ping -c1 -W{timeout:g} {b.ip} >/dev/null 2>&1;"
                                               f" echo $?")
                ok += out.strip().endswith("0")
        return ok, tried

    def node_names(self) -> list[str]:
        return [h.name for h in self.plans]

    def coordinator_node(self) -> str:
        return COORD_NAME
