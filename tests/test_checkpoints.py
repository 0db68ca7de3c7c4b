"""Checkpoint integrity: sha256 of the tensors verified on load, byte-identical files for identical weights."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from kvshift_lens.models.checkpoints import CHECKPOINT_FORMAT, read_checkpoint, state_sha256, write_safetensors
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import bare_state_dict, build_module
from kvshift_lens.models.checkpoints import load_model, save_model
from kvshift_lens.data.tasks.base import task_config
from kvshift_lens.training.train_config import TrainConfig
from kvshift_lens.training.trainer import train

CFG = ModelConfig(mixer="kv_shift", n_layers=1, d_model=16, n_heads=2, d_vocab=16, n_ctx=16, seed=0)


@pytest.fixture
def saved(tmp_path):
    model = build_module(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model, save_model(model, tmp_path / "m.safetensors")


def test_flipped_tensor_bytes_are_refused_naming_the_file(saved, tmp_path):
    _, path = saved
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # the last bytes are tensor data: safetensors itself loads this without complaint
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(raw))
    assert set(load_file(str(bad))) == set(load_file(str(path)))
    with pytest.raises(ValueError, match=f"^{bad} is corrupt: its tensors do not match the sha256"):
        load_model(bad)


def test_checkpoint_stores_the_sha256_of_its_tensors(saved):
    model, path = saved
    _, tensors, meta = read_checkpoint(path)
    assert meta["format"] == CHECKPOINT_FORMAT
    assert meta["sha256"] == state_sha256(tensors) == state_sha256(bare_state_dict(model))


def test_sha256_changes_with_any_tensor_byte_name_or_shape():
    t = {"a": torch.arange(6.0).view(2, 3), "b": torch.zeros(2)}
    base = state_sha256(t)
    flipped = {**t, "b": torch.tensor([0.0, 1e-30])}
    renamed = {"c": t["a"], "b": t["b"]}
    reshaped = {**t, "a": t["a"].view(3, 2)}
    assert len({base, state_sha256(flipped), state_sha256(renamed), state_sha256(reshaped)}) == 4


def test_saving_the_same_weights_gives_byte_identical_files(saved, tmp_path):
    model, first = saved
    copies = [save_model(model, tmp_path / f"copy{i}.safetensors").read_bytes() for i in range(6)]
    assert all(c == first.read_bytes() for c in copies)  # safetensors alone orders metadata by hash: not so


def test_metadata_keys_are_written_in_sorted_order(tmp_path):
    path = write_safetensors({"w": torch.zeros(2)}, {"z": "1", "a": "2", "m": "3"}, tmp_path / "x.safetensors")
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert list(header) == ["__metadata__", "w"] and list(header["__metadata__"]) == ["a", "m", "z"]
    assert torch.equal(load_file(str(path))["w"], torch.zeros(2))


def test_identical_training_runs_write_byte_identical_checkpoints(tmp_path):
    task = task_config("induction", d_vocab=16, seq_len=16, seed=0)
    cfg = TrainConfig(steps=4, batch_size=4, eval_every=2, eval_size=8, warmup=1, n_checkpoints=3, threads=1)
    for name in ("a", "b"):
        train(CFG, task, cfg, tmp_path / name, progress=False)
    files = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert len(files) >= 3
    for f in files:
        assert (tmp_path / "a" / "checkpoints" / f).read_bytes() == (tmp_path / "b" / "checkpoints" / f).read_bytes(), f


def test_checkpoint_written_before_checksums_still_loads(saved, tmp_path):
    model, path = saved
    _, tensors, meta = read_checkpoint(path)
    old = tmp_path / "v1.safetensors"
    save_file(tensors, str(old), metadata={"format": "kvshift_lens.model/1", "config": meta["config"]})
    x = torch.randint(0, 16, (1, 8))
    with torch.no_grad():
        assert torch.equal(load_model(old)(x), load_model(path)(x))


def test_current_format_without_checksum_is_refused(saved, tmp_path):
    _, path = saved
    _, tensors, meta = read_checkpoint(path)
    stripped = write_safetensors(tensors, {k: v for k, v in meta.items() if k != "sha256"}, tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match=f"^{stripped} is corrupt"):
        load_model(stripped)
