"""The transfer engine of model spilling: every byte that crosses the host<->GPU link.

Why a module of its own: spilling is bound by the link, so what is copied, when, on which stream
and what waits for it is the part that decides speed (and the part with the subtle bugs). Here:

* copy-in of a shard (H2D stream): one copy per flat buffer, in the *compute dtype* (a bf16 job
  sends the bf16 copy of its fp32 masters: half the bytes);
* gradients out (D2H stream): each gradient tensor autograd produced goes straight into its view
  of the shard's pinned landing buffer (no device-side concatenation, no second copy); the host
  upcasts to fp32 on the optimizer thread, off the GPU's critical path;
* GPU-optimizer mode: optimizer state in with the shard, parameters + state back out;
* activation offload: shard-boundary activations to pinned host memory and back.

Ordering uses CUDA events only (compute waits for "shard k arrived", D2H waits for "grads of k
computed"); the host thread never waits on the GPU here. Tensors used on a stream other than the
one that allocated them are `record_stream`ed so the caching allocator never hands their memory
out early. On the CPU there are no streams: the same code runs synchronously (a "copy in" is a
clone), which is what CI tests.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence


class Streams:
    """Real CUDA streams/events, or synchronous stand-ins on the CPU."""

    def __init__(self, device: Any):
        import torch

        self.cuda = device.type == "cuda"
        if self.cuda:
            self.compute: Any = torch.cuda.current_stream(device)  # None on the CPU
            self.h2d: Any = torch.cuda.Stream(device)
            self.d2h: Any = torch.cuda.Stream(device)
        else:
            self.compute = self.h2d = self.d2h = None

    def on(self, stream: Any) -> Any:
        import torch

        return torch.cuda.stream(stream) if self.cuda else contextlib.nullcontext()

    def event(self, stream: Any) -> Any:
        """An event recorded now on `stream` (None on the CPU: everything already happened)."""
        import torch

        if not self.cuda:
            return None
        ev = torch.cuda.Event()
        ev.record(stream)
        return ev

    def wait(self, stream: Any, event: Any) -> None:
        if self.cuda and event is not None:
            stream.wait_event(event)

    @staticmethod
    def host_wait(event: Any) -> None:
        if event is not None:
            event.synchronize()

    def use_on(self, tensors: Sequence[Any], stream: Any) -> None:
        """`tensors` (allocated on another stream) are used on `stream`: tell the allocator."""
        if self.cuda:
            for t in tensors:
                t.record_stream(stream)


@dataclass
class Resident:
    """A shard on the device: its flat parameter buffers and the views into them."""

    flats: list[Any]
    views: list[Any]  # per parameter, in shard order
    buffers: list[Any]
    ready: Any  # event on the H2D stream
    state: Optional[list[dict[str, Any]]] = None  # GPU-optimizer mode: per parameter
    state_ready: Any = None
    state_fetched: bool = False


def is_state_tensor(key: str, v: Any) -> bool:
    import torch

    return isinstance(v, torch.Tensor) and key != "step" and v.dim() > 0


class Transfers:
    """Copies for one engine's shards on one device; counts the bytes it moves."""

    def __init__(self, shards: list[Any], device: Any, pin: bool):
        self.shards = shards
        self.device = device
        self.pin = pin
        self.streams = Streams(device)
        self.bytes_in = 0
        self.bytes_out = 0
        self.copies_in = 0

    # ---------------------------------------------------------------- parameters in
    def fetch(self, k: int) -> Resident:
        """Copy shard k's parameters in, in the compute dtype (H2D stream); returns at once."""
        import torch

        sh = self.shards[k]
        st = self.streams
        with st.on(st.h2d):
            st.wait(st.h2d, sh.written)
            flats = []
            for src in sh.sendable():
                if st.cuda:
                    d = torch.empty(src.shape, dtype=src.dtype, device=self.device)
                    d.copy_(src, non_blocking=True)
                else:
                    d = src.clone()
                flats.append(d)
                self.bytes_in += src.numel() * src.element_size()
            bufs = [b.to(self.device, non_blocking=True) if st.cuda else b.clone()
                    for b in sh.buffers]
            ready = st.event(st.h2d)
        if sh.pool is not None:
            sh.sent(ready)  # lean: its wire buffers are reusable once this copy is done
        self.copies_in += 1
        views: list[Any] = [None] * len(sh.params)
        for g, flat in zip(sh.groups, flats):
            for i, v in zip(g.index, g.views(flat)):
                views[i] = v
        return Resident(flats, views, bufs, ready)

    def fetch_state(self, k: int, res: Resident) -> None:
        """GPU-optimizer mode: bring shard k's optimizer state in (H2D stream)."""
        sh = self.shards[k]
        st = self.streams
        opt_state = sh.optimizer.state
        if not any(p in opt_state for p in sh.params):
            res.state = None  # first step: the optimizer creates its state on the GPU
            return
        with st.on(st.h2d):
            st.wait(st.h2d, sh.written)
            res.state = []
            for p in sh.params:
                s = opt_state.get(p, {})
                res.state.append({key: (v.to(self.device, non_blocking=True)
                                        if is_state_tensor(key, v) else v)
                                  for key, v in s.items()})
            res.state_ready = st.event(st.h2d)

    def use(self, res: Resident) -> None:
        """Make the compute stream wait for `res` to arrive."""
        st = self.streams
        st.wait(st.compute, res.ready)
        st.use_on(res.flats + res.buffers, st.compute)
        if res.state is not None:
            st.wait(st.compute, res.state_ready)
            st.use_on([v for s in res.state for key, v in s.items() if is_state_tensor(key, v)],
                      st.compute)

    # ---------------------------------------------------------------- gradients out
    def grads_out(self, k: int, param_grads: list[Any]) -> Any:
        """Copy shard k's gradients straight into its pinned landing buffer (D2H stream), one
        copy per tensor and no staging; returns the event the host waits on before stepping."""
        st = self.streams
        sh = self.shards[k]
        ev = st.event(st.compute)
        with st.on(st.d2h):
            st.wait(st.d2h, ev)
            sent = []
            for g, landing in zip(sh.groups, sh.grad_landing()):
                for i, view in zip(g.index, g.views(landing)):
                    gr = param_grads[i]
                    if gr is None:
                        view.zero_()  # host memory: no stream involved
                        continue
                    view.copy_(gr, non_blocking=st.cuda)
                    sent.append(gr)
                    self.bytes_out += gr.numel() * gr.element_size()
            st.use_on(sent, st.d2h)
            return st.event(st.d2h)

    # ---------------------------------------------------------------- GPU-optimizer write-back
    def write_back(self, k: int, res: Resident, dev_state: list[dict[str, Any]],
                   host_state: list[Optional[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Copy shard k's stepped parameters and optimizer state back to the host (D2H stream);
        returns the new host-side state per parameter."""
        import torch

        st = self.streams
        sh = self.shards[k]
        ev = st.event(st.compute)
        with st.on(st.d2h):
            st.wait(st.d2h, ev)
            for hf, df in zip(sh.host_flat, res.flats):
                hf.copy_(df, non_blocking=st.cuda)
                self.bytes_out += df.numel() * df.element_size()
            st.use_on(res.flats, st.d2h)
            new_host_state = []
            for i, s in enumerate(dev_state):
                prev = host_state[i]
                hs = dict(prev) if prev is not None else {}
                for key, v in s.items():
                    if is_state_tensor(key, v):
                        h = hs.get(key)
                        if h is None or h.shape != v.shape or h.device.type != "cpu":
                            h = torch.empty(v.shape, dtype=v.dtype, pin_memory=self.pin)
                        h.copy_(v, non_blocking=st.cuda)
                        st.use_on([v], st.d2h)
                        hs[key] = h
                    else:
                        hs[key] = v
                new_host_state.append(hs)
            sh.written = st.event(st.d2h)
        return new_host_state

    # ---------------------------------------------------------------- activation offload
    def offload(self, t: Any) -> Any:
        import torch

        st = self.streams
        ev = st.event(st.compute)
        with st.on(st.d2h):
            st.wait(st.d2h, ev)
            h = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pin)
            h.copy_(t, non_blocking=st.cuda)
            st.use_on([t], st.d2h)
            done = st.event(st.d2h)
        return (h, done)

    def bring_back(self, item: Any) -> Any:
        import torch

        h, done = item
        st = self.streams
        with st.on(st.h2d):
            st.wait(st.h2d, done)  # stream order, not a host wait: the host keeps issuing work
            d = torch.empty(h.shape, dtype=h.dtype, device=self.device)
            d.copy_(h, non_blocking=st.cuda)
            ev = st.event(st.h2d)
        return (d, ev)
