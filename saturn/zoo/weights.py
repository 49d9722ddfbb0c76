"""A `model.weights:` path: the file it names, and whether that file is a PyTorch checkpoint.

Why: a file that is not one (a text file, a JSON, a truncated download) reached `torch.load` in
every trial and attempt, and failed there with whatever the unpickler tripped on (`IndexError: pop
from empty list`, `KeyError: 101`) -- naming neither the file nor the field. `weights_problem` is
checked with the jobs' other local files before any work (saturn.spec.limits.missing_local_paths);
`load_weights` (saturn.zoo.models) names the file too if loading still fails. Torch-free: a
`torch.save` file is a zip archive holding a `data.pkl` (or, in the legacy format, a pickle).
"""

from __future__ import annotations

import os
import zipfile
from typing import Optional

STATE_FILES = ("model.pt", "pytorch_model.bin")  # looked for in a weights directory


def weights_file(path: str) -> str:
    """The checkpoint file `path` names: the file itself, or a directory's model.pt /
    pytorch_model.bin (FileNotFoundError when a directory holds neither)."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        for name in STATE_FILES:
            if os.path.exists(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"no {' or '.join(STATE_FILES)} in {path}")
    return path


def weights_problem(path: str) -> Optional[str]:
    """Why `path` cannot be a model's weights (None: it looks like a PyTorch checkpoint)."""
    try:
        f = weights_file(path)
    except FileNotFoundError as exc:
        return str(exc)
    try:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as z:
                if any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist()):
                    return None
            return f"{f} is a zip archive but not a PyTorch checkpoint (no data.pkl); save it with torch.save"
        with open(f, "rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        return f"{f} cannot be read ({exc.strerror or exc})"
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # torch.save's legacy format: a pickle
        return None
    return f"{f} is not a PyTorch checkpoint (a state dict saved with torch.save)"
