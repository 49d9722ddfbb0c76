"""File-backed image classification data: files on disk -> read -> decode -> augment -> collate.

The files are real compressed images (JPEG via Pillow; without Pillow, zlib-compressed raw arrays,
`.npz`, which still cost CPU to inflate), so the pipeline costs CPU the way users' pipelines do.
`make_image_files` writes a small labelled set (class prototype + noise, so a model can learn it)
for tests, benchmarks and the `image-files` dataset's `generate:` option.

Every random choice in `augment` comes from a generator seeded by (seed, sample index): a sample's
pixels never depend on which thread, in which order, or with which pipeline configuration it ran.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from pathlib import Path
from typing import Any, cast

import numpy as np

from saturn.data.pipeline import Stage

try:  # Pillow ships with matplotlib/torchvision installs; the npz path covers its absence
    from PIL import Image
except ImportError:  # pragma: no cover - depends on the environment
    Image = None  # type: ignore[assignment]  # Pillow absent: the npz path is used

INDEX_FILE = "index.json"
MEAN, STD = 0.5, 0.25


def image_format() -> str:
    return "jpg" if Image is not None else "npz"


def make_image_files(directory: os.PathLike | str, n: int, *, size: int = 64, num_classes: int = 10,
                     seed: int = 0, quality: int = 90) -> Path:
    """Write `n` labelled images (size x size RGB) and `index.json` into `directory` (idempotent:
    an existing complete set with the same parameters is reused). Returns the directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"n": n, "size": size, "num_classes": num_classes, "seed": seed, "format": image_format()}
    idx_path = d / INDEX_FILE
    if idx_path.exists():
        try:
            old = json.loads(idx_path.read_text())
            if all(old.get(k) == v for k, v in meta.items()):
                return d
        except (OSError, ValueError):
            pass
    rng = np.random.default_rng(seed)
    # Smooth prototypes (low-frequency patterns) compress like photos, unlike white noise.
    coarse = rng.uniform(0, 255, (num_classes, 8, 8, 3))
    protos = np.stack([np.kron(c, np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size] for c in coarse])
    files, labels = [], []
    for i in range(n):
        label = int(rng.integers(num_classes))
        img = np.clip(protos[label] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        name = f"{i:06d}.{meta['format']}"
        tmp = d / (name + ".tmp")
        if Image is not None:
            Image.fromarray(img).save(tmp, format="JPEG", quality=quality)
        else:
            tmp.write_bytes(zlib.compress(img.tobytes(), 6))
        os.replace(tmp, d / name)
        files.append(name)
        labels.append(label)
    tmp = d / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps({**meta, "files": files, "labels": labels}))
    os.replace(tmp, idx_path)  # written last: a set with an index is complete
    return d


class ImageFiles:
    """The stages of an image pipeline over a directory written by `make_image_files` (or any
    directory with an `index.json` of {"files": [...], "labels": [...]}).

    out_size: side of the augmented square crop; heavy: extra augmentation work (a blur pass per
    sample), to make a pipeline CPU-bound on fast machines."""

    offload_stages = ("decode", "augment")  # CPU-heavy: the starting split of threads favours them

    def __init__(self, directory: os.PathLike | str, *, out_size: int = 32, seed: int = 0, heavy: int = 0):
        self.dir = Path(directory)
        try:
            index = json.loads((self.dir / INDEX_FILE).read_text())
        except FileNotFoundError:
            raise ValueError(f"{self.dir} has no {INDEX_FILE}; generate a set with `generate: N` in the "
                             "dataset kwargs or saturn.data.make_image_files") from None
        self.files, self.labels = index["files"], index["labels"]
        self.size = int(index.get("size", 0))
        self.out_size, self.seed, self.heavy = int(out_size), int(seed), int(heavy)
        if not self.files:
            raise ValueError(f"{self.dir}/{INDEX_FILE} lists no files")

    def __len__(self) -> int:
        return len(self.files)

    # -------------------------------------------------------------------------------- stages
    def read(self, _item: Any, i: int) -> tuple[bytes, int]:
        k = i % len(self.files)
        with open(self.dir / self.files[k], "rb") as f:
            return f.read(), int(self.labels[k])

    def decode(self, item: tuple[bytes, int], _i: int) -> tuple[np.ndarray, int]:
        raw, label = item
        if Image is not None and not raw.startswith(b"x"):
            with Image.open(io.BytesIO(raw)) as im:
                arr = np.asarray(im.convert("RGB"))
        else:
            flat = np.frombuffer(zlib.decompress(raw), dtype=np.uint8)
            side = int(round((flat.size // 3) ** 0.5))
            arr = flat.reshape(side, side, 3)
        return arr, label

    def augment(self, item: tuple[np.ndarray, int], i: int) -> tuple[np.ndarray, int]:
        """Random resized crop + flip + brightness/contrast jitter + normalize, seeded by index."""
        arr, label = item
        rng = np.random.default_rng([self.seed, int(i)])
        h, w = arr.shape[:2]
        scale = rng.uniform(0.5, 1.0)
        ch, cw = max(1, int(h * scale)), max(1, int(w * scale))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = arr[y:y + ch, x:x + cw]
        flip = rng.random() < 0.5
        gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        if Image is not None:
            out = np.asarray(Image.fromarray(crop).resize((self.out_size, self.out_size), Image.Resampling.BILINEAR))
        else:
            ys = np.linspace(0, ch - 1, self.out_size).astype(int)
            xs = np.linspace(0, cw - 1, self.out_size).astype(int)
            out = crop[ys][:, xs]
        if flip:
            out = out[:, ::-1]
        f = out.astype(np.float32) * gain + bias
        for _ in range(self.heavy):  # 3x3 box blur: deterministic extra CPU work
            p = np.pad(f, ((1, 1), (1, 1), (0, 0)), mode="edge")
            f = cast(np.ndarray, sum(p[dy:dy + self.out_size, dx:dx + self.out_size]  # 9 arrays, never 0
                                     for dy in range(3) for dx in range(3))) / 9.0
        f = (np.clip(f, 0, 255) / 255.0 - MEAN) / STD
        return np.ascontiguousarray(f.transpose(2, 0, 1), dtype=np.float32), label

    def stages(self, workers: dict[str, int] | None = None) -> list[Stage]:
        w = workers or {}
        return [Stage("read", self.read, w.get("read", 1)), Stage("decode", self.decode, w.get("decode", 1)),
                Stage("augment", self.augment, w.get("augment", 1))]

    def sample(self, i: int) -> tuple[np.ndarray, int]:
        """One sample through all stages inline (what the pipeline produces for index i)."""
        return self.augment(self.decode(self.read(None, i), i), i)
