"""The Communicator: how a worker turns its local gradient into its next model.

The trainer computes a gradient and hands it, with the model, to one Communicator; it never
asks which kind it has. Three kinds:
- SwitchAllReduce: the switch sums every worker's (encoded) gradient; x <- x - lr * sum / n.
  The sum is bit-identical on every worker, so the models stay identical.
- HostAllGather: compressors the switch cannot sum; every worker all-gathers the others'
  compressed bytes and sums them in worker-id order (again bit-identical everywhere).
  Compressors that need matrices (PowerSGD) are applied per layer, vectors go uncompressed;
  every other compressor sees the whole gradient as one tensor.
- GossipCommunicator: decentralized SGD; a local step x_i <- x_i - lr * g_i, then one gossip
  step with the graph neighbours (worker/gossip.py). The models differ between workers and
  only agree on average.
Error feedback is one Memory (worker/compress/memory.py) owned by the communicator of a job.
Each step returns the communication metrics of the job records (bytes_up/down, packets_up/down,
retransmissions, comm_s).
"""
from __future__ import annotations

import abc
import struct
import time

import numpy as np

from worker.models import Params
from nina.accounting import from_call_stats


class Communicator(abc.ABC):
    label: str = "?"
    decentralized: bool = False    # models differ between workers (gossip)

    @abc.abstractmethod
    def step(self, params: Params, grad: Params, lr: float) -> dict:
        """Apply one SGD step with this worker's gradient to params (in place)."""


class SwitchAllReduce(Communicator):
    """The gradient (optionally pre-compressed, e.g. nat9) through the switch's all-reduce."""

    def __init__(self, client, n_workers: int, pre=None, memory=None, label: str = "switch"):
        self.client, self.n, self.pre, self.memory, self.label = client, n_workers, pre, memory, \
            label

    def step(self, params, grad, lr):
        v = self.memory.corrected("grad", grad.flat) if self.memory is not None else grad.flat
        x = self.pre(v) if self.pre is not None else v
        r = self.client.allreduce(x, record=True)
        if self.memory is not None:
            self.memory.update("grad", v, r.contribution)
        params.flat -= np.float32(lr / self.n) * r.values
        st = r.stats
        # where the bytes went (payload, headers, padding, parts, priming, retx): nina.accounting
        parts = from_call_stats(st.as_dict(), self.client.spec.encoding, self.client.spec.cm)
        return {"bytes_up": st.bytes_out, "bytes_down": st.bytes_in,
                "packets_up": st.packets_out, "packets_down": st.packets_in,
                "retransmissions": st.retransmissions, "comm_s": st.seconds,
                "elements": st.elements, "payload_bits_up": 8 * parts["up_payload"],
                **{k: v for k, v in parts.items() if not k.endswith("_bytes")}}


_PART = struct.Struct("!I")


class HostAllGather(Communicator):
    """Every worker's compressed gradient to every other over the TCP mesh, summed in order."""

    def __init__(self, gather, n_workers: int, spec: str, seed: int = 0, memory=None,
                 label: str = "host"):
        from worker.compress import get_compressor
        self.gather, self.n, self.memory, self.label = gather, n_workers, memory, label
        self.spec = spec
        self.comp = get_compressor(spec, seed)
        self.plain = get_compressor("none", seed)
        self.decoders = {spec: get_compressor(spec, 0), self.plain.spec: self.plain}

    def parts(self, grad: Params) -> list[tuple[str, np.ndarray, object]]:
        """(memory key, tensor, compressor) in a fixed order every worker agrees on."""
        if not self.comp.needs_matrix:
            return [("grad", grad.flat, self.comp)]
        out = []
        r = getattr(self.comp, "r", 1)
        for lay, t in grad:
            matrix = len(lay.shape) >= 2 and min(lay.shape[0], lay.size // lay.shape[0]) >= r
            out.append((lay.name, t, self.comp if matrix else self.plain))
        return out

    def step(self, params, grad, lr):
        from worker.allgather import pack_message, sum_in_order
        parts = self.parts(grad)
        blob = bytearray()
        payload, bits = 0, 0
        for key, t, comp in parts:
            v = self.memory.corrected(key, t) if self.memory is not None else t
            c = comp.compress(v, key=key) if comp.needs_matrix else comp.compress(v)
            if self.memory is not None:
                self.memory.update(key, v, comp.decompress(c))
            msg = pack_message(c.codec, c.shape, c.data)
            blob += _PART.pack(len(msg)) + msg
            payload, bits = payload + len(c.data), bits + c.bits
        blobs, st = self.gather.allgather(bytes(blob))
        decoded = [self._decode(b, len(parts), w) for w, b in enumerate(blobs)]
        total = Params(params.layers)
        if len(parts) == 1:
            total.flat[:] = sum_in_order([d[0].reshape(-1) for d in decoded])
        else:
            for k, (lay, t) in enumerate(total):
                t[...] = sum_in_order([d[k].reshape(lay.shape) for d in decoded])
        params.flat -= np.float32(lr / self.n) * total.flat
        peers = self.gather.n - 1   # the all-gather sends its message to every other worker
        got = sum(self._payload_len(b, len(parts)) for w, b in enumerate(blobs)
                  if w != self.gather.wid)
        return {"bytes_up": st.bytes_out, "bytes_down": st.bytes_in,
                "packets_up": st.messages_out, "packets_down": st.messages_out,
                "retransmissions": 0, "comm_s": st.seconds,
                "elements": int(grad.flat.size), "payload_bits_up": bits,
                "up_payload": peers * payload, "up_headers": st.bytes_out - peers * payload,
                "down_payload": got, "down_headers": st.bytes_in - got}

    @staticmethod
    def _payload_len(blob: bytes, n_parts: int) -> int:
        """The compressed payload bytes in one worker's message (without framing)."""
        from worker.allgather import unpack_message
        pos, total = 0, 0
        for _ in range(n_parts):
            (ln,) = _PART.unpack_from(blob, pos)
            total += len(unpack_message(blob[pos + _PART.size:pos + _PART.size + ln])[2])
            pos += _PART.size + ln
        return total

    def _decode(self, blob: bytes, n_parts: int, who: int) -> list[np.ndarray]:
        from worker.allgather import FallbackError, unpack_message
        from worker.compress import Compressed
        out, pos = [], 0
        for _ in range(n_parts):
            if pos + _PART.size > len(blob):
                raise FallbackError(f"host all-gather: worker {who}'s message is truncated")
            (ln,) = _PART.unpack_from(blob, pos)
            codec, shape, payload = unpack_message(blob[pos + _PART.size:pos + _PART.size + ln])
            pos += _PART.size + ln
            dec = self.decoders.get(codec)
            if dec is None:
                raise FallbackError(f"host all-gather: worker {who} sent {codec!r}, this job "
                                    f"uses {self.spec!r}")
            out.append(dec.decompress(Compressed(payload, shape, 8 * len(payload), codec)))
        return out


class GossipCommunicator(Communicator):
    """Decentralized SGD: local step, then gossip with the neighbours."""

    decentralized = True

    def __init__(self, gossip, label: str = "gossip"):
        self.gossip, self.label = gossip, label

    def step(self, params, grad, lr):
        t0 = time.monotonic()
        params.flat -= np.float32(lr) * grad.flat
        rec = self.gossip.step(params.tensors)
        rec["comm_s"] = time.monotonic() - t0
        return rec
