"""Model and data zoo: every model trains a step at tiny size; sequences, weights, data positions."""

import pytest
import torch

from saturn.spec import Job, ModelSpec
from saturn.zoo import build_model, model_config, model_names, param_count
from saturn.zoo.data import SyntheticImages, SyntheticTokens, TextFile, batch_for_step, build_dataset
from saturn.zoo.gpt import GPT_CONFIGS


def tiny_overrides(name: str) -> dict:
    """Shrink any zoo config to toy size while keeping its head count (the family's shape)."""
    cfg = model_config(name)
    o = {"n_layer": 2, "n_embd": cfg.n_head * 4}
    if hasattr(cfg, "vocab_size"):
        o.update(vocab_size=128, n_positions=64)
    else:
        o.update(image_size=16, patch_size=8, num_classes=5)
    return o


@pytest.mark.parametrize("name", model_names())
def test_every_zoo_model_trains_one_step_at_tiny_size(name):
    torch.manual_seed(0)
    spec = ModelSpec(name=name, overrides=tiny_overrides(name))
    model = build_model(spec)
    cfg = model.config
    job = Job(name="j", model=spec, batch_size=2, seq_len=16, steps=1,
              data="synthetic-tokens" if hasattr(cfg, "vocab_size") else "synthetic-images")
    x, y = batch_for_step(build_dataset(job.data, job.seq_len, cfg), 0, 2)
    loss = model.loss(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    # the layer sequence: embedding, the repeated blocks, a head
    assert len(model.layers) == cfg.n_layer + 2
    assert len(model.blocks()) == cfg.n_layer
    assert sum(p.numel() for p in model.parameters()) == cfg.params()


@pytest.mark.parametrize("name", ["gpt2-xl", "gpt-6.7b", "gpt-13b", "vit-huge"])
def test_full_size_params_without_allocating(name):
    spec = ModelSpec(name=name)
    model = build_model(spec, device="meta")
    assert sum(p.numel() for p in model.parameters()) == param_count(spec)
    if name == "gpt-6.7b":
        assert 6.5e9 < param_count(spec) < 7.0e9
    if name == "gpt-13b":  # 40 layers, d_model 5120, 40 heads (issue 33)
        assert model.config.n_layer == 40 and model.config.n_embd == 5120 and model.config.n_head == 40
        assert 12.5e9 < param_count(spec) < 13.5e9


def test_hf_gpt2_weights_load_from_local_dir(tmp_path):
    spec = ModelSpec(name="gpt2-tiny")
    ours = build_model(spec)
    cfg = ours.config
    hf = {}  # write our weights in HF GPT-2 layout: transformer.*, Conv1D [in, out], tied head
    hf["transformer.wte.weight"] = ours.layers[0].wte.weight.detach().clone()
    hf["transformer.wpe.weight"] = ours.layers[0].wpe.weight.detach().clone()
    for i in range(cfg.n_layer):
        for k, v in ours.layers[i + 1].state_dict().items():
            conv = k in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                         "mlp.c_proj.weight")
            hf[f"transformer.h.{i}.{k}"] = v.t().clone() if conv else v.clone()
        hf[f"transformer.h.{i}.attn.bias"] = torch.ones(1)  # HF mask buffer: must be ignored
    head = ours.layers[-1]
    hf["transformer.ln_f.weight"] = head.ln_f.weight.detach().clone()
    hf["transformer.ln_f.bias"] = head.ln_f.bias.detach().clone()
    torch.save(hf, tmp_path / "pytorch_model.bin")
    loaded = build_model(ModelSpec(name="gpt2-tiny", weights=str(tmp_path)))
    x = torch.randint(0, cfg.vocab_size, (2, 8))
    # HF ties the head to wte, so the head comes from the embedding
    assert torch.equal(loaded.layers[-1].lm_head.weight, hf["transformer.wte.weight"])
    assert torch.equal(loaded.layers[1].attn.c_attn.weight, ours.layers[1].attn.c_attn.weight)
    assert loaded(x).shape == (2, 8, cfg.vocab_size)


def test_saturn_weights_round_trip(tmp_path):
    model = build_model(ModelSpec(name="vit-tiny"))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    again = build_model(ModelSpec(name="vit-tiny", weights=str(tmp_path / "model.pt")))
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_missing_weights_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.pt or pytorch_model.bin"):
        build_model(ModelSpec(name="gpt2-tiny", weights=str(tmp_path)))


@pytest.mark.parametrize("content", [b"hello world\n", b'{"a": 1}', b"", "list"])
def test_weights_that_are_not_a_checkpoint_are_a_clear_error_naming_the_file(tmp_path, content):
    """#31 item 8: a `weights:` file that is not a checkpoint gave `IndexError: pop from empty
    list` (or KeyError: 101) from the unpickler, naming neither the file nor the field."""
    from saturn.zoo.weights import weights_problem

    bad = tmp_path / "weights.bin"
    if content == "list":
        torch.save([1, 2], bad)  # a checkpoint, but not of a state dict
    else:
        bad.write_bytes(content)
        assert str(bad) in (weights_problem(str(bad)) or "")
    with pytest.raises(ValueError, match=f"model.weights {bad}"):
        build_model(ModelSpec(name="gpt2-tiny", weights=str(bad)))


def test_weights_that_are_not_a_checkpoint_are_refused_before_any_work(tmp_path, capsys):
    import yaml

    from saturn.zoo.weights import weights_problem
    from tests.helpers.cli import saturn_cli

    good = tmp_path / "model.pt"
    torch.save(build_model(ModelSpec(name="gpt2-tiny")).state_dict(), good)
    assert weights_problem(str(good)) is None and weights_problem(str(tmp_path)) is None
    bad = tmp_path / "notes.txt"
    bad.write_text("not weights\n")
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump({"name": "wt", "cluster": {"devices": "cpu", "slots": 1},
                                 "jobs": [{"name": "a", "model": {"name": "gpt2-tiny", "weights": str(bad)},
                                           "batch_size": 2, "seq_len": 8, "steps": 5, "precision": "fp32"}]}))
    t = tmp_path / "t.csv"
    t.write_text("job,technique,knobs,gpus,step_time_s,startup_s,feasible,gpu_type\na,ddp,{},1,0.1,1.0,True,cpu\n")
    rd = tmp_path / "run"
    code, out, _ = saturn_cli(["run", w, "--profiles", t, "--no-live", "--run-dir", rd], capsys)
    flat = " ".join(out.split())
    assert code == 2 and "jobs.a.model.weights" in flat and "not a PyTorch checkpoint" in flat, out[-2000:]
    assert "Traceback" not in out and not rd.exists()


def test_datasets_are_deterministic_and_indexed():
    a, b = SyntheticTokens(100, 16, seed=1), SyntheticTokens(100, 16, seed=1)
    assert torch.equal(a[5][0], b[5][0]) and not torch.equal(a[5][0], a[6][0])
    x, y = a[3]
    assert torch.equal(x[1:], y[:-1])  # targets are inputs shifted by one
    imgs = SyntheticImages(8, 3, 4, seed=2)
    assert torch.equal(imgs[7][0], SyntheticImages(8, 3, 4, seed=2)[7][0])


def test_step_is_the_data_position_across_data_parallel_ranks():
    ds = SyntheticTokens(64, 8)
    full_x, _ = batch_for_step(ds, 3, 4)
    halves = [batch_for_step(ds, 3, 4, rank=r, world=2)[0] for r in range(2)]
    assert torch.equal(torch.cat(halves), full_x)
    with pytest.raises(ValueError, match="not divisible"):
        batch_for_step(ds, 0, 3, world=2)


def test_text_file_dataset(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello world " * 20)
    ds = TextFile(str(p), seq_len=10)
    x, y = ds[0]
    assert bytes(x.tolist()).decode() == "hello worl" and len(ds) == (240 - 1) // 10


def test_synthetic_tokens_are_learnable():
    """A tiny GPT's loss falls well below chance on the synthetic stream in a few dozen steps."""
    torch.manual_seed(0)
    job = Job(name="j", model="gpt2-tiny", batch_size=8, seq_len=32, steps=1)
    model = build_model(job.model)
    ds = build_dataset(job.data, job.seq_len, model.config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        x, y = batch_for_step(ds, step, 8)
        loss = model.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 5.0 and sum(losses[-5:]) / 5 < 0.75 * losses[0]


def test_gpt_configs_cover_the_family():
    assert {"gpt2-tiny", "gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt-2.7b",
            "gpt-6.7b", "gpt-13b"} <= set(GPT_CONFIGS)
