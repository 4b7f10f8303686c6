"""Helpers of the reliability tests: a stand-in for Snakemake's ``snakemake`` object, a
read-only folder, a size-limited file system, a port nobody listens on."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest


class Names(list):
    """A tiny stand-in for Snakemake's Namedlist."""

    def __init__(self, items=(), **named):
        super().__init__([*items, *named.values()])
        for k, v in named.items():
            setattr(self, k, v)


def fake_smk(tmp: Path, config: dict[str, Any], *, rule: str = "ingest_merge", inputs=(),
             wildcards: dict[str, str] | None = None, **outputs: str) -> SimpleNamespace:
    """The ``snakemake`` object of a rule script whose outputs lie under ``tmp/out``."""
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    return SimpleNamespace(
        rule=rule,
        wildcards=dict(wildcards or {"source": "tng100"}),
        input=Names(inputs),
        output=Names(run_id=str(out / f"{rule}.run_id"), **{k: str(out / v) for k, v in outputs.items()}),
        params=SimpleNamespace(settings={"a": {"b": 1}}),
        config=config,
        log=[str(tmp / "logs" / f"{rule}.log")],
        scriptdir=str(Path(__file__).resolve().parent),
    )


def free_port() -> int:
    """A local TCP port with nothing listening on it (a tracking server that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """Make ``folder`` read-only for the duration: a read-only bind mount as root (where
    file modes do not stop writes), file modes otherwise."""
    if os.geteuid() == 0:
        if not _mount("--bind", str(folder), str(folder)):
            pytest.skip("running as root without permission to mount: no read-only folder")
        try:
            assert _mount("-o", "remount,bind,ro", str(folder), str(folder)), "read-only remount failed"
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield folder
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = "256k") -> Iterator[Path]:
    """A size-limited tmpfs at ``folder`` (root only; skips otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("needs root and permission to mount a small tmpfs")
    try:
        yield folder
    finally:
        # Lazy: a library that failed mid-write may still hold a descriptor (torch.save does).
        subprocess.run(["umount", "-l", str(folder)], check=True)
