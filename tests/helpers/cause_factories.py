"""Factories and worker targets that fail in chosen ways, for the true-cause tests (#31 item 4,
#33 item 4): `data: {factory: "tests.helpers.cause_factories:lying_data"}` prints "out of memory" and raises
ValueError; `killed_data` SIGKILLs its worker (only inside a worker: RANK is set there, never in
the executor); the `*_target` functions are `launch.run_workers` targets."""

from __future__ import annotations

import os
import signal
import sys
import time


def _tokens(vocab_size: int, seq_len: int):
    from saturn.zoo.data import SyntheticTokens

    return SyntheticTokens(vocab_size, seq_len)


def lying_data(seq_len: int, vocab_size: int = 256):
    if "RANK" in os.environ:  # in a worker (a trial or an attempt)
        print("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (out of memory)", flush=True)
        raise ValueError("the data factory broke after printing 'out of memory'")
    return _tokens(vocab_size, seq_len)


def killed_data(seq_len: int, vocab_size: int = 256, wait_s: float = 1.5):
    if "RANK" in os.environ:
        time.sleep(wait_s)  # sampled by the supervisor meanwhile
        os.kill(os.getpid(), signal.SIGKILL)
    return _tokens(vocab_size, seq_len)


def lying_target(payload, ctx):
    print("torch.OutOfMemoryError: CUDA out of memory; std::bad_alloc; out of memory", flush=True)
    raise ValueError("not a memory problem")


def gpu_oom_target(payload, ctx):
    import torch

    try:
        raise torch.OutOfMemoryError("CUDA out of memory (raised on purpose)")
    except torch.OutOfMemoryError as exc:
        raise RuntimeError("a wrapper error") from exc


def sigkill_target(payload, ctx):
    import torch  # noqa: F401 - resident like a real worker

    time.sleep(float(payload.get("wait_s", 1.5)))
    os.kill(os.getpid(), signal.SIGKILL)


def slow_death_target(payload, ctx):
    """A warm worker whose reply pipe closes, then dies only after `linger_s` (the kernel freeing
    100+ GB after an OOM kill): the pool's 10 s wait raised TimeoutExpired as the job's cause."""
    os.close(int(sys.argv[3]))  # the warm worker's reply fd (saturn.runtime.warm_worker argv)
    time.sleep(float(payload.get("linger_s", 12)))
    os.kill(os.getpid(), signal.SIGKILL)
