"""Tokenized text from files: read a chunk -> tokenize -> pack into (inputs, targets) -> collate.

The corpus is one or more text files (a file, a directory of `*.txt`, or a glob), cut into
fixed-size byte chunks; sample i is chunk i (mod the number of chunks). Tokenization is a
deterministic byte-bigram tokenizer hashed into the model's vocabulary (no vocabulary file to
ship; a user with a real tokenizer passes it as `tokenize=`), vectorized with numpy so the stage
releases the GIL and scales over worker threads.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from saturn.data.pipeline import Stage


def corpus_files(path: str) -> list[Path]:
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        files = sorted(p.glob("*.txt"))
    elif p.exists():
        files = [p]
    else:
        files = [Path(f) for f in sorted(glob.glob(str(p)))]
    if not files:
        raise ValueError(f"no text files at {path!r}: give a file, a directory of *.txt files or a glob")
    return files


def bigram_tokenize(raw: bytes, vocab_size: int) -> np.ndarray:
    """Overlapping-free byte bigrams -> ids in [0, vocab_size): exact ids when the vocabulary holds
    all 65536 bigrams, a multiplicative hash otherwise."""
    b = np.frombuffer(raw[: len(raw) // 2 * 2], dtype=np.uint8).astype(np.int64)
    ids = b[0::2] * 256 + b[1::2]
    if vocab_size < 65536:
        ids = (ids * 2654435761) % vocab_size
    return ids


class TokenFiles:
    """Stages of a tokenized-text pipeline. Each sample holds seq_len + 1 tokens, so a chunk is
    2 * (seq_len + 1) bytes (bigram tokens); a short final chunk is padded with token 0."""

    def __init__(self, path: str, *, seq_len: int, vocab_size: int,
                 tokenize: Callable[[bytes, int], np.ndarray] | None = None):
        self.files = corpus_files(path)
        self.seq_len, self.vocab = int(seq_len), int(vocab_size)
        self.chunk = 2 * (self.seq_len + 1)
        self.tokenize = tokenize or bigram_tokenize
        self.offsets: list[tuple[int, int]] = []  # chunk -> (file number, byte offset)
        for fi, f in enumerate(self.files):
            n = os.path.getsize(f) // self.chunk
            self.offsets += [(fi, k * self.chunk) for k in range(n)]
        if not self.offsets:
            raise ValueError(f"{path!r} holds fewer than {self.chunk} bytes per file: too short for one "
                             f"sample of seq_len {seq_len}")

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, _item: Any, i: int) -> bytes:
        fi, off = self.offsets[i % len(self.offsets)]
        with open(self.files[fi], "rb") as f:
            f.seek(off)
            return f.read(self.chunk)

    def tokenize_stage(self, raw: bytes, _i: int) -> np.ndarray:
        return self.tokenize(raw, self.vocab)

    def pack(self, ids: np.ndarray, _i: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.seq_len + 1
        seq = np.zeros(n, dtype=np.int64)
        seq[: min(n, len(ids))] = ids[:n]
        return seq[:-1], seq[1:]

    def stages(self, workers: dict[str, int] | None = None) -> list[Stage]:
        w = workers or {}
        return [Stage("read", self.read, w.get("read", 1)),
                Stage("tokenize", self.tokenize_stage, w.get("tokenize", 1)),
                Stage("pack", self.pack, w.get("pack", 1))]

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pack(self.tokenize_stage(self.read(None, i), i), i)
