"""The hardware part of a profile key: where a step time was measured.

A step time is only valid on the hardware it was measured on, so every stored row carries the GPU
model and memory, the GPU interconnect and the torch version. CPU "slots" (`devices: cpu`) are
hardware type 'cpu' with interconnect 'none'.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any, Optional

HARDWARE_COLUMNS = ("gpu_type", "gpu_memory_gb", "interconnect", "torch_version")


@dataclass(frozen=True)
class Hardware:
    gpu_type: str  # 'H200', 'cpu', ...
    gpu_memory_gb: float
    interconnect: str  # 'nvlink', 'pcie', 'none', ...
    torch_version: str
    gpus: int  # devices this machine can lend the profiler

    def key(self) -> dict[str, Any]:
        """The columns that go into the store key (not `gpus`: counts are a separate column)."""
        d = asdict(self)
        d.pop("gpus")
        return d

    def matches(self, row: Any) -> bool:
        """Whether a stored row was measured on this hardware (memory to 1 GB, for rounding)."""
        try:
            return (str(row["gpu_type"]).lower() == self.gpu_type.lower()
                    and abs(float(row["gpu_memory_gb"]) - self.gpu_memory_gb) < 1.0
                    and str(row["interconnect"]) == self.interconnect
                    and str(row["torch_version"]) == self.torch_version)
        except (KeyError, TypeError, ValueError):
            return False


def torch_version() -> str:
    try:
        import torch

        return str(torch.__version__).split("+")[0]
    except ImportError:  # pragma: no cover - the profiler needs torch to run trials anyway
        return "none"


@functools.lru_cache(maxsize=1)
def detect_interconnect() -> str:
    """'nvlink' when `nvidia-smi topo -m` shows NV links between GPUs, 'pcie' for other GPU
    systems, 'none' without GPUs (CPU slots)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "none"
        count = torch.cuda.device_count()
    except ImportError:
        return "none"
    if count < 2:
        return "single"
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "unknown"
    try:
        out = subprocess.run([exe, "topo", "-m"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return parse_topology(out)


def parse_topology(text: str) -> str:
    """Summarise `nvidia-smi topo -m` as 'nvlink' (all GPU pairs NV#), 'nvlink-partial' or 'pcie'."""
    import re

    gpu_rows = [line.split() for line in text.splitlines()
                if re.match(r"GPU\d+\s", line)]  # row lines; the header line starts with a tab
    links: list[str] = []
    n = len(gpu_rows)
    for i, cells in enumerate(gpu_rows):
        # cells[0] is the row label 'GPU<i>', then one column per GPU ('X' on the diagonal).
        for j in range(1, min(len(cells), n + 1)):
            if j - 1 != i:
                links.append(cells[j])
    if not links:
        return "unknown"
    nv = [c for c in links if c.startswith("NV")]
    if len(nv) == len(links):
        return "nvlink"
    return "nvlink-partial" if nv else "pcie"


def gpu_device_visible() -> bool:
    """Whether this machine may have a CUDA/ROCm device, without importing torch (1.5 s): its
    device files or nvidia-smi. False means local_hardware() would report CPU slots."""
    import shutil

    return (any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))
            or shutil.which("nvidia-smi") is not None)


def local_hardware(cpu_slots: Optional[int] = None, cpu_memory_gb: float = 4.0) -> Hardware:
    """This machine's hardware. With `cpu_slots` (or without CUDA) CPU slots are the 'GPUs'."""
    from saturn.spec.schema import short_gpu_name  # one naming rule for spec and profiles

    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cpu_slots is not None or not cuda:
        return Hardware("cpu", float(cpu_memory_gb), "none", torch_version(), int(cpu_slots or 1))
    import torch

    props = torch.cuda.get_device_properties(0)
    return Hardware(short_gpu_name(props.name), round(props.total_memory / 2**30, 1),
                    detect_interconnect(), torch_version(), torch.cuda.device_count())


def hardware_for_cluster(cluster: Any) -> Hardware:
    """The local hardware that will measure `cluster`'s profiles; a SaturnError when this machine
    cannot stand in for the cluster's nodes (e.g. profiling H200 nodes on a laptop)."""
    from saturn.errors import SpecError

    resolved = cluster.resolved()
    nodes = list(resolved.nodes or [])
    types = sorted({str(n.gpu_type) for n in nodes})
    if types == ["cpu"]:
        slots = max(n.gpus for n in nodes)
        mem = max(float(n.gpu_memory_gb) for n in nodes)
        return Hardware("cpu", mem, "none", torch_version(), slots)
    hw = local_hardware()
    if hw.gpu_type == "cpu":
        raise SpecError(f"cluster nodes are {', '.join(types)} GPUs but this machine has no CUDA GPU; "
                        "run `saturn profile` on the target machine, or profile a `cluster: "
                        "{devices: cpu, slots: N}` workload here")
    if hw.gpu_type.lower() not in {t.lower() for t in types}:
        raise SpecError(f"cluster nodes are {', '.join(types)} GPUs but this machine has "
                        f"{hw.gpu_type}; profiles are only valid on the GPU they were measured on. "
                        "Run `saturn profile` on a node of the cluster, or use `cluster: local`")
    return hw
