"""The controller's error type and the error text it makes of gRPC failures, shared by the
controller and its register side channel."""
from __future__ import annotations

import grpc
from google.rpc import code_pb2, status_pb2
from p4.v1 import p4runtime_pb2 as p4rt


class ControllerError(Exception):
    """A one-line explanation for the user: switch unreachable, entry rejected, bad job."""


# ---- error text from gRPC / p4runtime-shell ----

def write_error_text(e: grpc.RpcError) -> str:
    """The first per-update p4.v1.Error of a failed Write, as 'update i: CODE: message'."""
    details = None
    for key, value in e.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            details = status_pb2.Status.FromString(value)
    if details is None:
        return grpc_error_text(e)
    msgs = []
    for i, d in enumerate(details.details):
        err = p4rt.Error()
        if d.Unpack(err) and err.canonical_code != code_pb2.OK:
            msgs.append(f"update {i}: {code_pb2.Code.Name(err.canonical_code)}: {err.message}")
    if not msgs:
        return grpc_error_text(e)
    more = f" (and {len(msgs) - 1} more failed updates)" if len(msgs) > 1 else ""
    return msgs[0] + more


def grpc_error_text(e: grpc.RpcError) -> str:
    return f"{e.code().name}: {e.details()}"
