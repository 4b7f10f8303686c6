"""A full disk or a read-only results/: a clear error naming the artefact, nothing partial left.

The writers are the project's own (simobs.io.atomic_path users): the file index of a
source (text), a rejected-files manifest (pandas), a training checkpoint (torch.save).
"""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest
import torch

import simobs.embedding.checkpoint as checkpoint
from reliability_helpers import read_only, small_filesystem
from simobs.data.ingest import write_file_index, write_manifest
from simobs.io import OutputWriteError, atomic_path, write_text_atomic


def _index(folder: Path) -> Path:
    (folder / "fits").mkdir(exist_ok=True)
    for i in range(3):
        (folder / "fits" / f"g{i}.fits").write_bytes(b"")
    target = folder / "index.txt"
    write_file_index(str(folder / "fits" / "*.fits"), target, source="sdss")
    return target


def _manifest(folder: Path, rows: int = 3) -> Path:
    target = folder / "rejected.tsv"
    write_manifest(pd.DataFrame({"file": [f"f{i}.fits" for i in range(rows)], "reason": ["nan"] * rows}), target)
    return target


def _checkpoint(folder: Path, n: int = 10) -> Path:
    target = folder / "checkpoint.pt"
    checkpoint.save_checkpoint(target, {"epoch": 1, "weights": torch.arange(n, dtype=torch.float32)})
    return target


def _half_then_enospc(real):
    """Wrap a writer ``real(obj, path)``: write the first half of its bytes, then fail as a full disk."""
    def write(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


@pytest.mark.parametrize("writer", ["index", "manifest", "checkpoint"])
def test_injected_enospc_names_the_artefact_and_keeps_the_old_version(tmp_path, monkeypatch, writer):
    make = {"index": _index, "manifest": _manifest, "checkpoint": _checkpoint}[writer]
    target = make(tmp_path)  # a complete earlier version
    before = target.read_bytes()
    if writer == "index":
        monkeypatch.setattr(Path, "write_text", lambda self, text: _half_then_enospc(
            lambda t, p: Path.write_bytes(p, t.encode()))(text, self))
    elif writer == "manifest":
        real = pd.DataFrame.to_csv
        monkeypatch.setattr(pd.DataFrame, "to_csv", lambda self, path, **kw: _half_then_enospc(
            lambda f, p: real(f, p, **kw))(self, path))
    else:
        monkeypatch.setattr(checkpoint.torch, "save", _half_then_enospc(torch.save))
    with pytest.raises(OutputWriteError, match=rf"cannot write {target}: No space left on device") as err:
        make(tmp_path)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert "Nothing was written" in str(err.value) and "free space" in str(err.value)
    assert target.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_real_full_file_system(tmp_path):
    """A 256 KiB tmpfs: each writer fails with the artefact's path; nothing partial stays."""
    with small_filesystem(tmp_path / "small", "256k") as small:
        (small / "filler").write_bytes(b"\0" * 100_000)
        _index(small)  # fits
        for make, size in ((_manifest, 50_000), (_checkpoint, 200_000)):
            with pytest.raises(OutputWriteError, match=r"cannot write .*: No space left on device") as err:
                make(small, size)
            assert err.value.errno == errno.ENOSPC and not Path(err.value.filename).exists()
        assert sorted(p.name for p in small.iterdir()) == ["filler", "fits", "index.txt"]


def test_read_only_results_folder(tmp_path):
    results = tmp_path / "results"
    (results / "tables").mkdir(parents=True)
    old = results / "tables" / "old.tsv"
    write_text_atomic(old, "complete\n")
    with read_only(results):
        for target in (results / "tables" / "new.tsv", results / "figures" / "new.png"):
            with pytest.raises(OutputWriteError, match=rf"cannot write {target}: .*writable") as err:
                write_text_atomic(target, "x")
            assert err.value.errno in (errno.EROFS, errno.EACCES)
        with pytest.raises(OutputWriteError, match=r"checkpoint\.pt"):
            _checkpoint(results / "tables")
    assert old.read_text() == "complete\n"
    assert sorted(p.name for p in (results / "tables").iterdir()) == ["old.tsv"]


def test_errors_that_are_not_the_disk_pass_unchanged(tmp_path):
    with pytest.raises(PermissionError, match="an input"):
        with atomic_path(tmp_path / "x.txt"):
            raise PermissionError(errno.EACCES, "an input is not readable")
    with pytest.raises(ValueError, match="bad value"):
        with atomic_path(tmp_path / "x.txt"):
            raise ValueError("bad value")
    assert list(tmp_path.iterdir()) == []
