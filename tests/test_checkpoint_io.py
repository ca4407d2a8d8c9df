"""Checkpoints are written all or nothing: a kill during a write leaves the previous file readable."""

import os

import pytest
import torch

from gen_lightning import checkpoint_io
from gen_lightning.checkpoint_io import AtomicCheckpointIO, atomic_torch_save


def test_a_write_cut_short_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()

    def killed_midway(obj, f):  # half of the bytes reach the disk, then the process is interrupted
        f.write(b"PK\x03\x04" + b"\0" * 4096)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert torch.load(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind


def test_the_io_plugin_replaces_the_file_and_keeps_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    io.save_checkpoint({"step": 2}, path)
    assert io.load_checkpoint(path, weights_only=True)["step"] == 2
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
