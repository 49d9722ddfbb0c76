"""A user dataset factory (`data: {factory: "tests.helpers.slow_data:slow_tokens", kwargs: {...}}`) whose
loading takes a set time per sample, so that steps are slow enough for the executor tests to kill,
stop or switch a run mid-way."""

from __future__ import annotations

import time


class SlowTokens:
    def __init__(self, vocab_size: int, seq_len: int, delay_s: float):
        from saturn.zoo.data import SyntheticTokens

        self.inner = SyntheticTokens(vocab_size, seq_len)
        self.delay_s = delay_s

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        time.sleep(self.delay_s)
        return self.inner[i]


def slow_tokens(seq_len: int, vocab_size: int, delay_s: float = 0.01) -> SlowTokens:
    """Synthetic tokens that take `delay_s` seconds a sample."""
    return SlowTokens(vocab_size, seq_len, delay_s)
