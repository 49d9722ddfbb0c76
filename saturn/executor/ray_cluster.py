"""Nodes and their GPUs, discovered from a Ray cluster (`cluster: {ray: {address: auto}}`).

Every alive Ray node with GPUs becomes a Saturn `Node`; with `devices: cpu` (tests, CI, laptops) a
node's CPU "GPUs" are its custom `saturn_slots` resource (`ray start --resources
'{"saturn_slots": 2}'`). Nodes without any (e.g. a CPU-only head node) are not planned on.

Names are `<hostname>-<first 6 hex digits of the Ray node id>`: readable in plans and the live
display, and unique even when several raylets share a host (as in `ray.cluster_utils.Cluster`).
A node that dies and comes back gets a new Ray node id, hence a new name: it is a new node.

Ray is imported lazily: nothing here is needed by the local single-node backend. The spec never
calls this module: `saturn.executor.build.resolve_cluster` does, when a run or plan needs the nodes.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Optional

from saturn.errors import SaturnError

log = logging.getLogger(__name__)

__all__ = ["SLOTS_RESOURCE", "RayNode", "RayUnavailableError", "connect", "devices_of", "discover", "node_name",
           "nodes_from_entries", "require_ray"]

SLOTS_RESOURCE = "saturn_slots"
# Ray reports no GPU memory; the planner only uses it for feasibility hints, profiles decide.
_GPU_MEMORY_GB = {"H200": 141.0, "H100": 80.0, "A100": 80.0, "A100-40G": 40.0, "A100-80G": 80.0, "L4": 24.0,
                  "A10G": 24.0, "L40S": 48.0, "V100": 16.0, "T4": 16.0, "B200": 180.0}


class RayUnavailableError(SaturnError):
    """Ray is not installed or no cluster answers at the address."""


def require_ray():
    try:
        import ray  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RayUnavailableError("cluster.ray needs Ray: pip install 'saturn[ray]' (or pip install ray)") from exc
    return ray


def connect(address: Optional[str] = "auto", **init_kwargs: Any):
    """`ray.init(address)` once per process (a no-op when already connected); returns the module."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    probe_address(address)
    try:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                 logging_level=logging.WARNING, **init_kwargs)
    except ConnectionError as exc:
        raise RayUnavailableError(f"no Ray cluster at {address!r}: {exc}. Start one (`ray start --head`, "
                                  "`ray up cluster.yaml`, KubeRay) or set cluster.ray.address") from exc
    return ray


PROBE_TIMEOUT_S = 5.0
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def probe_address(address: Optional[str], timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, within about 2 x `timeout_s`, a Ray address where no Ray server answers.

    Why before `ray.init`: given an unreachable GCS address, ray.init retries inside C++ for minutes
    ("Failed to connect to GCS") and, stuck there, never runs the Python SIGTERM handler it installed,
    so not even SIGTERM stops the process. Ray's GCS and its client server (ray://) speak gRPC, i.e.
    HTTP/2, whose server opens with a SETTINGS frame: we connect, send the HTTP/2 preface and want that
    frame back. `auto` / None probe $RAY_ADDRESS when it is set (Ray connects there); otherwise they,
    like `local`, are found or started by Ray itself and not probed."""
    if not address or address == "auto":
        address = os.environ.get("RAY_ADDRESS") or None
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not port_text.isdigit():
        return  # not host:port: let Ray interpret it
    host = host.strip("[]") or "127.0.0.1"
    try:
        sock = socket.create_connection((host, int(port_text)), timeout=timeout_s)
    except OSError as exc:
        raise RayUnavailableError(
            f"no Ray cluster at {address!r}: cannot connect to {host}:{port_text} ({exc.strerror or exc}). Start one "
            "(`ray start --head`, `ray up cluster.yaml`, KubeRay) or fix cluster.ray.address") from None
    with sock:
        try:
            sock.settimeout(timeout_s)
            sock.sendall(_H2_PREFACE)
            head = sock.recv(9)
        except OSError:  # no answer within the timeout, or the peer hung up
            head = b""
    if len(head) < 4 or head[3] != 0x04:  # frame type 4 = SETTINGS
        raise RayUnavailableError(
            f"no Ray cluster at {address!r}: {host}:{port_text} accepts connections but does not answer as a "
            "Ray (gRPC) server; check the port (the GCS port is 6379 by default, ray:// clients use 10001)")


@dataclass(frozen=True)
class RayNode:
    """One planable Ray node: the Saturn node `name` and its Ray `node_id`."""

    name: str
    node_id: str
    gpus: int
    gpu_type: str
    gpu_memory_gb: float
    address: str

    def to_node(self):
        from saturn.spec.schema import Node

        return Node(name=self.name, gpus=self.gpus, gpu_memory_gb=self.gpu_memory_gb, gpu_type=self.gpu_type)


def node_name(entry: dict) -> str:
    host = entry.get("NodeManagerHostname") or entry.get("NodeManagerAddress") or "node"
    return f"{host.split('.')[0]}-{entry['NodeID'][:6]}"


def devices_of(entries: list[dict], devices: str = "auto") -> str:
    """"cuda" when any alive node has Ray GPUs (and devices is not forced to cpu), else "cpu"."""
    if devices != "auto":
        return devices
    return "cuda" if any(e.get("Alive") and float((e.get("Resources") or {}).get("GPU", 0)) >= 1
                         for e in entries) else "cpu"


def nodes_from_entries(entries: list[dict], devices: str = "auto", slots: Optional[int] = None,
                       gpu_memory_gb: Optional[float] = None) -> list[RayNode]:
    """Planable nodes from `ray.nodes()` entries (pure; unit-tested without Ray)."""
    devices = devices_of(entries, devices)
    out = []
    for e in entries:
        if not e.get("Alive"):
            continue
        res = e.get("Resources") or {}
        if devices == "cuda":
            n = int(float(res.get("GPU", 0)))
            gtype = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), None) or "GPU"
            mem = gpu_memory_gb or _GPU_MEMORY_GB.get(gtype.upper(), 80.0)
        else:
            n = int(float(res.get(SLOTS_RESOURCE, 0)))
            if not n and slots:
                n = slots if float(res.get("CPU", 0)) >= 1 else 0
            gtype, mem = "cpu", gpu_memory_gb or 4.0
        if n <= 0:
            continue
        out.append(RayNode(name=node_name(e), node_id=e["NodeID"], gpus=n, gpu_type=gtype, gpu_memory_gb=mem,
                           address=e.get("NodeManagerAddress", "")))
    return sorted(out, key=lambda n: n.name)


def discover(address: Optional[str] = "auto", devices: str = "auto", slots: Optional[int] = None,
             gpu_memory_gb: Optional[float] = None) -> tuple[list[RayNode], str]:
    """(planable nodes, device type) of the Ray cluster at `address` (connects if needed)."""
    ray = connect(address)
    entries = ray.nodes()
    dev = devices_of(entries, devices)
    nodes = nodes_from_entries(entries, dev, slots, gpu_memory_gb)
    if not nodes:
        what = "GPUs" if dev == "cuda" else f"a '{SLOTS_RESOURCE}' resource (ray start --resources " \
                                            f"'{{\"{SLOTS_RESOURCE}\": 2}}')"
        raise RayUnavailableError(f"the Ray cluster at {address!r} has no alive node with {what}")
    return nodes, dev
