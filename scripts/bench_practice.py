"""The plain-loop reference for the end-to-end benchmark: the same jobs as a user writes them.

Each job is its own Python process, one after another (the way a user runs a sweep by hand):
build the model from its config (no hub download), AdamW, bf16 autocast on GPU, random data made
the ordinary way (a fresh random batch per step, made on the device), `loss.backward()`,
`optimizer.step()`, and at the end `torch.save` of the model and optimizer state dicts. The
total is the wall time of all processes, interpreter start and imports included.

Models: GPT-2 as Hugging Face `transformers.GPT2LMHeadModel(GPT2Config(...))` and ViT-base as
`timm.create_model("vit_base_patch16_224", pretrained=False)` when those packages are installed
(the GPU host), else Saturn's zoo model of the same architecture built plainly
(`saturn.zoo.build_model`, an ordinary nn.Module trained by the same loop); the JSON says which.

    python scripts/bench_practice.py --workload W.yaml --out practice.json   # every job of W.yaml
    python scripts/bench_practice.py --one '{"model": ...}'                  # one job (internal)

`scripts/bench_e2e.py` runs this on its workload; alone, it writes only --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

T_PROCESS = time.time()  # before the heavy imports: they are part of a user's job
ROOT = Path(__file__).resolve().parents[1]

GPT2 = {"gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
        "gpt2-xl": (48, 1600, 25)}


def jobs_of(workload_path: Path) -> list[dict[str, Any]]:
    """The workload's jobs as plain dicts (name, model, overrides, batch, seq, steps, lr, precision, kind)."""
    sys.path.insert(0, str(ROOT))
    from saturn.spec import load_workload

    wl = load_workload(str(workload_path))
    out = []
    for j in wl.jobs:
        kind = "image" if str(j.data.name or "").endswith("images") else "tokens"
        out.append({"name": j.name, "model": j.model.name, "overrides": dict(j.model.overrides or {}),
                    "batch_size": j.batch_size, "seq_len": j.seq_len, "steps": j.total_steps,
                    "lr": j.optimizer.lr, "weight_decay": getattr(j.optimizer, "weight_decay", 0.0) or 0.0,
                    "precision": j.precision, "kind": kind})
    return out


def build(job: dict[str, Any], device: Any) -> tuple[Any, str, Any]:
    """(model, which implementation, loss function(model, x, y))."""
    import torch.nn.functional as F

    name, over = job["model"], job["overrides"]
    if name in GPT2 and not over:
        try:
            from transformers import GPT2Config, GPT2LMHeadModel

            n_layer, n_embd, n_head = GPT2[name]
            cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=1024)
            m = GPT2LMHeadModel(cfg).to(device)

            def lm_loss(model: Any, x: Any, y: Any) -> Any:  # HF shifts the labels itself
                return model(input_ids=x, labels=x).loss
            return m, "transformers.GPT2LMHeadModel", lm_loss
        except ImportError:
            pass
    if name == "vit-base" and not over:
        try:
            import timm

            m = timm.create_model("vit_base_patch16_224", pretrained=False).to(device)
            return m, "timm.vit_base_patch16_224", lambda model, x, y: F.cross_entropy(model(x).float(), y)
        except ImportError:
            pass
    sys.path.insert(0, str(ROOT))
    from saturn.spec.schema import ModelSpec
    from saturn.zoo import build_model

    m = build_model(ModelSpec(name=name, overrides=over), device=device)

    def zoo_loss(model: Any, x: Any, y: Any) -> Any:
        out = model(x)
        if job["kind"] == "tokens":
            return F.cross_entropy(out.flatten(0, 1).float(), y.flatten())
        return F.cross_entropy(out.float(), y)
    return m, f"saturn.zoo {name} (plain nn.Module)", zoo_loss


def random_batch(job: dict[str, Any], model_vocab: int, classes: int, image: int, device: Any) -> tuple[Any, Any]:
    import torch

    b = job["batch_size"]
    if job["kind"] == "tokens":
        x = torch.randint(0, model_vocab, (b, job["seq_len"] + 1), device=device)
        return x[:, :-1], x[:, 1:]  # (HF: labels = the input itself, see build)
    return (torch.randn(b, 3, image, image, device=device),
            torch.randint(0, classes, (b,), device=device))


def run_one(job: dict[str, Any], save_dir: str, device_type: str) -> dict[str, Any]:
    """One job, as a user's script does it; returns its timings (seconds)."""
    import torch

    t0 = time.time()
    device = torch.device("cuda" if device_type == "cuda" else "cpu")
    torch.manual_seed(0)
    model, impl, loss_fn = build(job, device)
    vocab, classes, image = 50257, 1000, 224  # GPT-2's vocabulary, ImageNet's classes and size
    if impl.startswith("saturn.zoo"):
        from saturn.zoo import model_config

        cfg = model_config(job["model"], job["overrides"])
        vocab = min(vocab, getattr(cfg, "vocab_size", vocab))
        classes = getattr(cfg, "num_classes", classes)
        image = getattr(cfg, "image_size", image)
    opt = torch.optim.AdamW(model.parameters(), lr=job["lr"], weight_decay=job["weight_decay"])
    bf16 = job["precision"] == "bf16" and device.type == "cuda"
    t_built = time.time()
    times = []
    loss = None
    for _ in range(job["steps"]):
        ts = time.perf_counter()
        x, y = random_batch(job, vocab, classes, image, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - ts)
    t_trained = time.time()
    path = os.path.join(save_dir, f"{job['name']}.pt")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": job["steps"]}, path)
    t_saved = time.time()
    size = os.path.getsize(path)
    os.remove(path)  # the benchmark host's disk is shared with Saturn's run
    times_sorted = sorted(times[2:] or times)
    return {"job": job["name"], "implementation": impl, "final_loss": float(loss.item()) if loss is not None else None,
            "process_start_to_built_s": t_built - T_PROCESS, "build_s": t_built - t0,
            "train_s": t_trained - t_built, "save_s": t_saved - t_trained, "save_bytes": size,
            "step_time_median_s": times_sorted[len(times_sorted) // 2], "steps": job["steps"]}


def run_all(workload: Path, out: Optional[Path], device_type: str, save_dir: Optional[str] = None,
            on_job: Any = None, timeout_s: float = 900.0) -> dict[str, Any]:
    """Every job of `workload`, one process each, in sequence. `on_job(result_so_far)` after each
    (so a cut-off run leaves what finished)."""
    jobs = jobs_of(workload)
    save_dir = save_dir or tempfile.mkdtemp(prefix="saturn-practice-")
    res: dict[str, Any] = {"jobs": [], "device": device_type, "save_dir": save_dir, "complete": False}
    t0 = time.time()
    for job in jobs:
        ts = time.time()
        p = subprocess.run([sys.executable, __file__, "--one", json.dumps(job), "--save-dir", save_dir,
                            "--device", device_type], capture_output=True, text=True, timeout=timeout_s)
        wall = time.time() - ts
        line = next((x for x in reversed(p.stdout.splitlines()) if x.startswith("{")), None)
        r = json.loads(line) if p.returncode == 0 and line else {
            "job": job["name"], "error": (p.stderr or p.stdout)[-2000:], "returncode": p.returncode}
        r["process_wall_s"] = wall
        res["jobs"].append(r)
        res["total_wall_s"] = time.time() - t0
        if on_job is not None:
            on_job(res)
        if out is not None:
            _write(out, res)
    res["complete"] = all("error" not in r for r in res["jobs"])
    res["total_wall_s"] = time.time() - t0
    if out is not None:
        _write(out, res)
    return res


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", type=Path, help="workload YAML: run every job")
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    ap.add_argument("--one", default=None, help="(internal) one job as JSON")
    ap.add_argument("--save-dir", default=None)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(json.loads(args.one), args.save_dir or tempfile.gettempdir(), args.device)))
        return
    if args.workload is None:
        sys.exit("give --workload W.yaml")
    res = run_all(args.workload, args.out, args.device, args.save_dir)
    print(json.dumps({"total_wall_s": res["total_wall_s"], "complete": res["complete"]}))


if __name__ == "__main__":
    main()
