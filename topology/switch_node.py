"""The rack's ToR switch as a Mininet node: our own switch process on the node's interfaces.

No Open vSwitch and no OpenFlow controller: start() runs either the embedded NINA data plane
(`nina switch --mode ifaces`, raw AF_PACKET sockets on s1-eth1..N) or BMv2's
simple_switch_grpc (`-i 1@s1-eth1 ...`) in the root namespace, with P4Runtime on loopback;
stop() ends exactly that process. Port p is the p-th interface (s1-eth<p>); a BMv2 switch
given a `monitor_intf` (a veth the rack created) has it as one more port, the highest, where the
P4 program's trace clones leave.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from mininet.node import Switch

from nina.procs import REPO, die_with_parent, stop_pid
from topology.runenv import nina_cmd, wait_tcp

SWITCH_KINDS = ("embedded", "bmv2")
BMV2_BINARY = "simple_switch_grpc"


def bmv2_missing_reason() -> str | None:
    if shutil.which(BMV2_BINARY) is None:
        return (f"--switch bmv2 needs `{BMV2_BINARY}` on PATH (BMv2 is not packaged for "
                f"Debian or PyPI; build p4lang/behavioral-model) — use --switch embedded")
    return None


def bmv2_argv(ports: list[tuple[int, str]], thrift_port: int, grpc_addr: str) -> list[str]:
    """simple_switch_grpc's command line for the rack: ports (number, interface), no program
    (the controller pushes it), thrift for register access, and a notifications socket of
    its own (BMv2's default, ipc:///tmp/bmv2-0-notifications.ipc, is shared by every BMv2 of
    the machine: two racks at once would both bind it)."""
    cmd = [BMV2_BINARY, "--device-id", "0"]
    for port, name in ports:
        cmd += ["-i", f"{port}@{name}"]
    notifications = f"ipc:///tmp/nina-bmv2-{os.getpid()}-{thrift_port}-notifications.ipc"
    return cmd + ["--no-p4", "--thrift-port", str(thrift_port),
                  "--notifications-addr", notifications, "--",
                  "--grpc-server-addr", grpc_addr]


class NinaSwitch(Switch):
    """Mininet Switch whose data plane is a NINA switch process (embedded or BMv2)."""

    def __init__(self, name, kind: str = "embedded", grpc_addr: str = "127.0.0.1:9559",
                 run_dir: str = ".", trace: bool = True, thrift_port: int = 9090,
                 on_spawn=None, monitor_intf: str | None = None, tx_gso: int = 1,
                 rx_gso: bool = False, **params):
        if kind not in SWITCH_KINDS:
            raise ValueError(f"switch kind must be one of {SWITCH_KINDS}, got {kind!r}")
        super().__init__(name, **params)
        self.kind = kind
        self.grpc_addr = grpc_addr
        self.run_dir = run_dir
        self.trace = trace
        self.thrift_port = thrift_port
        self.on_spawn = on_spawn          # callback(pid, argv): the launcher records it
        self.monitor_intf = monitor_intf if kind == "bmv2" else None
        self.tx_gso = tx_gso              # embedded: results per GSO frame (switch --tx-gso)
        self.rx_gso = rx_gso              # embedded: GSO frames taken whole (switch --rx-gso)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(run_dir, f"switch-{kind}.log")
        # the name `nina trace summary <run dir>` looks for
        self.trace_path = os.path.join(os.path.abspath(run_dir), "switch.trace") if trace else None

    def port_intfs(self) -> list[str]:
        """Data-plane interfaces ordered by port number (port 0, `lo`, is the control one)."""
        return [self.intfs[p].name for p in sorted(self.intfs) if p > 0]

    @property
    def monitor_port(self) -> int | None:
        """BMv2 port of the monitor interface (None: no monitor port)."""
        return len(self.port_intfs()) + 1 if self.monitor_intf else None

    def command(self) -> list[str]:
        intfs = self.port_intfs()
        if self.kind == "embedded":
            cmd = nina_cmd("switch", "--mode", "ifaces", "--ifaces", ",".join(intfs),
                           "--grpc", self.grpc_addr)
            if self.trace_path:
                cmd += ["--trace", self.trace_path]
            if self.tx_gso > 1:
                cmd += ["--tx-gso", str(self.tx_gso)]
            if self.rx_gso:
                cmd += ["--rx-gso"]
            return cmd
        reason = bmv2_missing_reason()
        if reason:
            raise RuntimeError(reason)
        ports = list(enumerate(intfs, start=1))
        if self.monitor_intf:
            ports.append((self.monitor_port, self.monitor_intf))
        return bmv2_argv(ports, self.thrift_port, self.grpc_addr)

    def start(self, controllers) -> None:      # controllers: unused, there is no OpenFlow
        cmd = self.command()
        os.makedirs(self.run_dir, exist_ok=True)
        with open(self.log_path, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            # Own session: a Ctrl-C at the rack prompt must not kill the switch under the rack;
            # the launcher stops it in its teardown.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO,
                                         start_new_session=True, preexec_fn=die_with_parent)
        if self.on_spawn:
            self.on_spawn(self.proc.pid, cmd)
        wait_tcp(self.grpc_addr, self.proc, 60.0, f"switch process ({self.kind})",
                 self.log_path)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop_process(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc.poll()
            self.proc = None

    def stop(self, deleteIntfs=True) -> None:
        self.stop_process()
        super().stop(deleteIntfs)

    def connected(self) -> bool:
        return self.alive()
