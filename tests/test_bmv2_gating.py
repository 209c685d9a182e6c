"""The BMv2 path's preconditions (issue 16, items 10-12), checked without BMv2: tests and the
bench gate on what they run (the switch binary, not p4c); a BMv2 without thrift is named as
such; every rack BMv2 has a notifications socket of its own."""
from __future__ import annotations

import shutil
import socket

import pytest


def test_bmv2_plane_does_not_need_p4c(monkeypatch):
    from switch import bmv2_harness as planes
    real = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda name, *a, **k: "/usr/local/bin/simple_switch_grpc"
                        if name == "simple_switch_grpc" else (None if name == "p4c"
                                                              else real(name, *a, **k)))
    why = planes.bmv2_unavailable()
    assert why is None or "p4c" not in why
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert "simple_switch_grpc" in planes.bmv2_unavailable()


def test_missing_thrift_service_says_how_bmv2_must_be_built():
    pytest.importorskip("bm_runtime")
    from switch.controller import ControllerError, ThriftRegisterReader
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ControllerError) as e:
        ThriftRegisterReader("127.0.0.1", port, timeout=2.0)
    assert "--with-thrift" in str(e.value) and f"127.0.0.1:{port}" in str(e.value)


def test_every_rack_bmv2_has_its_own_notifications_socket():
    pytest.importorskip("mininet.node")
    from topology.switch_node import bmv2_argv
    a = bmv2_argv([(1, "s1-eth1")], 9090, "127.0.0.1:9559")
    b = bmv2_argv([(1, "s1-eth1")], 9091, "127.0.0.1:9560")
    addr = [argv[argv.index("--notifications-addr") + 1] for argv in (a, b)]
    assert addr[0] != addr[1]
    assert "ipc:///tmp/bmv2-0-notifications.ipc" not in addr
    assert a.index("--notifications-addr") < a.index("--")   # a BMv2 option, not a target one
