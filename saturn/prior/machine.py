"""Measure this machine's rates once (a few seconds) and keep them in the profile store.

Why: the prior (`saturn.prior.cost_model`) turns FLOPs and bytes into seconds; the rates it needs
(matmul per dtype, device memory, host link, interconnect, host optimizer, launch latency) differ
between machines far more than the models' arithmetic does. They are probed once per hardware
and cached in `<store>/machine-rates.json`, keyed by the hardware key (GPU type, memory,
interconnect, torch version, device count), written atomically under a file lock.

CPU slots (`devices: cpu`) are probed too, with the threads one slot gets. With one GPU the
interconnect cannot be measured: it is estimated from the datasheet and labelled so.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from filelock import FileLock

from saturn.errors import SaturnError
from saturn.prior.cost_model import MachineRates, datasheet_rates
from saturn.profiler.hardware import Hardware
from saturn.profiles.store import is_seed_dir

log = logging.getLogger(__name__)

RATES_FILE = "machine-rates.json"
MATMUL_SIZES = (512, 1024, 2048, 4096)
CPU_MATMUL_SIZES = (128, 256, 512)


def hardware_key(hw: Hardware) -> str:
    return f"{hw.gpu_type}|{hw.gpu_memory_gb:.1f}|{hw.interconnect}|{hw.torch_version}|{hw.gpus}"


def _timed(fn: Callable[[], Any], sync: Callable[[], None], reps: int) -> float:
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def probe(hw: Hardware, cpu_threads: Optional[int] = None) -> MachineRates:
    """Measure `hw` (this machine): CUDA device 0 (and 1 for the interconnect), or the CPU with
    `cpu_threads` threads (the share of one CPU slot)."""
    import torch

    t_start = time.perf_counter()
    cuda = hw.gpu_type.lower() != "cpu"
    old_threads = torch.get_num_threads()
    if not cuda and cpu_threads:
        torch.set_num_threads(max(1, int(cpu_threads)))
    try:
        dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
        sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
        mm: dict[str, dict[int, float]] = {}
        rows = 8192 if cuda else 512
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)) if cuda else (("fp32", torch.float32),):
            mm[name] = {}
            for n in MATMUL_SIZES if cuda else CPU_MATMUL_SIZES:
                a = torch.randn(rows, n, device=dev, dtype=dtype)
                b = torch.randn(n, n, device=dev, dtype=dtype)
                s = _timed(functools.partial(torch.matmul, a, b), sync, 10 if cuda else 3)
                mm[name][n] = round(2.0 * rows * n * n / s / 1e12, 4)
        nbytes = (512 if cuda else 32) * 2**20
        x = torch.empty(nbytes // 4, device=dev, dtype=torch.float32)
        y = torch.empty_like(x)
        mem = 2 * nbytes / _timed(lambda: y.copy_(x), sync, 10 if cuda else 3) / 1e9  # read + write
        if cuda:
            host = torch.empty(nbytes // 4, dtype=torch.float32, pin_memory=True)
            h2d = nbytes / _timed(lambda: x.copy_(host, non_blocking=True), sync, 5) / 1e9
        else:
            h2d = mem / 2  # a CPU slot's "host link" is a copy in the same memory
        if cuda and torch.cuda.device_count() > 1:
            z = torch.empty_like(x, device=torch.device("cuda", 1))

            def both() -> None:
                torch.cuda.synchronize(0)
                torch.cuda.synchronize(1)

            net = nbytes / _timed(lambda: z.copy_(x), both, 5) / 1e9
            net_src = "measured (GPU0 -> GPU1 copy)"
        elif cuda:
            net, net_src = datasheet_rates(hw.gpu_type, hw.interconnect).interconnect_gbps, \
                "estimated (one GPU: datasheet)"
        else:
            net, net_src = mem / 4, "estimated (CPU slots: a quarter of memory bandwidth)"
        small = torch.ones(16, device=dev)
        launch = _timed(lambda: small.add_(1.0), sync, 2000) * 1e6
        params = torch.nn.Parameter(torch.zeros(4_000_000 if cuda else 500_000))
        params.grad = torch.zeros_like(params)
        try:  # the host optimizer spilling uses (saturn.techniques.spilling.host_optimizer)
            opt = torch.optim.AdamW([params], lr=1e-4, fused=True)
        except (RuntimeError, TypeError, ValueError):
            opt = torch.optim.AdamW([params], lr=1e-4)
        adam = params.numel() / _timed(opt.step, lambda: None, 3)
    finally:
        torch.set_num_threads(old_threads)
    took = time.perf_counter() - t_start
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    return MachineRates(hw.gpu_type, mm, round(mem, 2), round(h2d, 2), round(net, 2), round(adam, 0),
                        round(launch, 2), interconnect_source=net_src,
                        source=f"probed on {socket.gethostname()} at {when}Z in {took:.1f} s")


def probe_isolated(hw: Hardware, cpu_threads: Optional[int] = None, timeout_s: float = 180.0) -> MachineRates:
    """`probe`, for GPUs in a child process: the caller (a `saturn run` that goes on to train)
    then holds no CUDA context or cached blocks on GPU 0. CPU slots are probed in-process."""
    if hw.gpu_type.lower() == "cpu":
        return probe(hw, cpu_threads=cpu_threads)
    import subprocess
    import sys
    from dataclasses import asdict

    root = str(Path(__file__).resolve().parents[2])  # this saturn's checkout, wherever the caller runs
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-m", "saturn.prior.machine", json.dumps(asdict(hw))],
                         capture_output=True, text=True, timeout=timeout_s, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the machine probe failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    return MachineRates.from_dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _path(store_dir: Union[str, os.PathLike]) -> Path:
    return Path(store_dir) / RATES_FILE


def _entries(p: Path) -> dict[str, Any]:
    """The rates file's entries as stored ({} when there is none); unreadable or not a JSON object:
    a SaturnError naming the file."""
    try:
        text = p.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise SaturnError(f"{p}: cannot be read ({exc.strerror or exc}); fix its permissions or delete it "
                          "(the machine is probed again)") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object of hardware -> rates, not {type(data).__name__}")
    except ValueError as exc:
        raise SaturnError(f"{p}: damaged machine rates ({type(exc).__name__}: {exc}); fix the entry or delete "
                          "the file (this machine is probed again; other machines' rates are lost)") from None
    return data


def cached_rates(store_dir: Union[str, os.PathLike, None]) -> dict[str, MachineRates]:
    """Every probed hardware in the store's rates file (empty when there is none)."""
    if store_dir is None:
        return {}
    p = _path(store_dir)
    try:
        return {str(k): _checked(MachineRates.from_dict(v)) for k, v in _entries(p).items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # never silently dropped (and rewritten without another machine's rates): named, for the user
        raise SaturnError(f"{p}: damaged machine rates ({type(exc).__name__}: {exc}); fix the entry or delete "
                          "the file (this machine is probed again; other machines' rates are lost)") from None


def _checked(r: MachineRates) -> MachineRates:
    """Every rate a finite number > 0 (a NaN or negative rate would make every option infeasible)."""
    for name in ("mem_gbps", "h2d_gbps", "interconnect_gbps", "host_adam_params_per_s", "launch_us"):
        v = getattr(r, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise ValueError(f"{name} must be a finite number > 0, not {v!r}")
    for dtype, table in r.matmul_tflops.items():
        if not all(0 < t < math.inf for t in table.values()):
            raise ValueError(f"matmul_tflops[{dtype!r}] must hold finite numbers > 0")
    return r


def load_or_probe(hw: Hardware, store_dir: Union[str, os.PathLike], cpu_threads: Optional[int] = None,
                  prober: Callable[..., MachineRates] = probe_isolated) -> MachineRates:
    """The cached rates of `hw`, probing (and caching) them the first time."""
    key = hardware_key(hw)
    have = cached_rates(store_dir)
    if key in have:
        return have[key]
    rates = prober(hw, cpu_threads=cpu_threads)
    if is_seed_dir(store_dir):  # Saturn writes nothing into the read-only seed rows
        log.warning("machine rates of %s not cached: the profile store %s is a seed directory (read-only); "
                    "set $SATURN_PROFILES to a directory of your own to keep them", key, store_dir)
        return rates
    p = _path(store_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(p.with_name(f".{p.name}.lock")), timeout=60):
        cached_rates(store_dir)  # a damaged file is named, never rewritten
        data = _entries(p)  # merged as stored: fields this version does not know are kept
        data[key] = rates.to_dict()
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    return rates


def rates_for(gpu_type: str, store_dir: Union[str, os.PathLike, None], *, local: Optional[Hardware] = None,
              cpu_threads: Optional[int] = None) -> MachineRates:
    """Rates for devices of `gpu_type`: probed here when this machine has them (`local`), else a
    probe of that type cached in the store, else the datasheet (labelled as such)."""
    if local is not None and local.gpu_type.lower() == str(gpu_type).lower() and store_dir is not None:
        try:
            return load_or_probe(local, store_dir, cpu_threads=cpu_threads)
        except Exception as exc:  # noqa: BLE001 - a failed probe falls back to cached/datasheet figures
            log.warning("machine probe failed (%s); using cached or datasheet rates", exc)
    for r in cached_rates(store_dir).values():
        if r.device.lower() == str(gpu_type).lower():
            return r
    if str(gpu_type).lower() == "cpu":
        mm = {"fp32": {128: 0.02, 256: 0.04, 512: 0.05}}
        return MachineRates("cpu", mm, 5.0, 2.5, 1.2, 2.0e7, 5.0,
                            interconnect_source="estimated (CPU slots)", source="datasheet: generic CPU")
    return datasheet_rates(gpu_type)


if __name__ == "__main__":  # `probe_isolated`'s child: Hardware fields as JSON in, rates JSON out
    import sys

    _hw = Hardware(**json.loads(sys.argv[1]))
    print(json.dumps(probe(_hw).to_dict()))
