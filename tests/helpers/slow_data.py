"""A user dataset factory (`data: {factory: "tests.helpers.slow_data:slow_tokens", kwargs: {...}}`)
whose loading takes a set time per sample, so that steps are slow enough for the executor tests to
kill, stop or switch a run mid-way. `solo_delay_s`: another time a sample when the job runs on one
device (one device as much slower than two as a test needs). `gate`: loading stops after
`gate_after` samples until the test creates that file, so a test decides when a job may end
instead of racing it."""

from __future__ import annotations

import os
import time
from typing import Optional

GATE_WAIT_S = 300.0  # a gate nobody opens lets the job go on after this long (the test then fails)


class SlowTokens:
    def __init__(self, vocab_size: int, seq_len: int, delay_s: float, gate: str = "", gate_after: int = 0,
                 solo_delay_s: Optional[float] = None):
        from saturn.zoo.data import SyntheticTokens

        self.inner = SyntheticTokens(vocab_size, seq_len)
        self.delay_s = delay_s
        self.solo_delay_s = solo_delay_s
        self.gate, self.gate_after, self.loaded = gate, gate_after, 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.loaded += 1
        if self.gate and self.loaded > self.gate_after:
            deadline = time.monotonic() + GATE_WAIT_S
            while not os.path.exists(self.gate) and time.monotonic() < deadline:
                time.sleep(0.05)
        solo = self.solo_delay_s is not None and os.environ.get("WORLD_SIZE", "1") == "1"
        time.sleep(self.solo_delay_s if solo else self.delay_s)
        return self.inner[i]


def slow_tokens(seq_len: int, vocab_size: int, delay_s: float = 0.01, gate: str = "",
                gate_after: int = 0, solo_delay_s: Optional[float] = None) -> SlowTokens:
    """Synthetic tokens that take `delay_s` seconds a sample; past `gate_after` samples (per loading
    process) each waits for the file `gate` to exist, if one is named; `solo_delay_s` a sample on
    one device (WORLD_SIZE 1), if given."""
    return SlowTokens(vocab_size, seq_len, delay_s, gate, gate_after, solo_delay_s)
