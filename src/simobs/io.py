"""Small file utilities shared by every stage: atomic writes and content digests."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["OutputWriteError", "atomic_path", "file_digest", "config_digest", "content_digest", "write_text_atomic"]


class OutputWriteError(OSError):
    """An artefact could not be written (disk full, quota, read-only file system).

    ``errno`` is the cause's (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES``); ``filename``
    the artefact's path.  Nothing was written to that path.
    """


#: Write failures that are about the disk, not the data, and what to do about them.
_DISK_ERRORS = {
    errno.ENOSPC: "free space on that file system (or point results/ at another disk), then rerun",
    errno.EDQUOT: "free space within your quota (or ask for a larger one), then rerun",
    errno.EROFS: "the file system is mounted read-only: run the study in a writable folder",
    errno.EACCES: "make the folder writable for you (or run the study elsewhere)",
}
_LOW_SPACE = 1 << 20  # bytes free below which a failed write is taken for a full disk


def _disk_errno(exc: BaseException, folder: Path, *, body: bool) -> int | None:
    """The disk errno behind ``exc``, or ``None`` when the failure is not the disk's.

    Libraries report a full disk differently: ``OSError(ENOSPC)`` (Python, pandas,
    h5py), a RuntimeError with no errno (``torch.save``).  Inside the body, ``EACCES`` may
    be a read of an input, so only the unambiguous codes count there; a RuntimeError
    counts when the file system has (almost) no space left.
    """
    codes = (errno.ENOSPC, errno.EDQUOT, errno.EROFS) if body else tuple(_DISK_ERRORS)
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and code in codes:
        return code
    text = str(exc)
    for candidate in codes:
        if os.strerror(candidate) in text or f"errno = {candidate}," in text:
            return candidate
    with contextlib.suppress(OSError):
        st = os.statvfs(folder)
        if isinstance(exc, (OSError, RuntimeError)) and st.f_bavail * st.f_frsize < _LOW_SPACE:
            return errno.ENOSPC
    return None


def _write_error(target: Path, code: int, exc: BaseException) -> OutputWriteError:
    return OutputWriteError(
        code, f"cannot write {target}: {os.strerror(code)} ({type(exc).__name__}: {str(exc)[:300]}). "
        f"Nothing was written to {target} (its temporary file was removed); {_DISK_ERRORS[code]}", str(target))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    The temporary file lives in the same folder, so the final ``os.replace`` is atomic
    on POSIX file systems: a reader (or Snakemake after a crash, a ``scancel`` or a
    SLURM time limit) sees either the complete old file, the complete new file or no
    file, never a partial one.  On an exception the temporary file is removed.  A write
    that fails because of the disk (full, over quota, read-only, not writable) raises
    :class:`OutputWriteError` naming ``target`` and what to do.

    Args:
        target: final path of the artefact.
        suffix: suffix of the temporary name (defaults to the target's suffix, so that
            libraries that dispatch on extensions, e.g. matplotlib, still work).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=target.suffix if suffix is None else suffix, dir=target.parent
        )
    except OSError as exc:
        code = _disk_errno(exc, target.parent if target.parent.exists() else Path("/"), body=False)
        if code is None:
            raise
        raise _write_error(target, code, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    in_body = True
    try:
        yield tmp_path
        in_body = False
        if tmp_path.is_file():
            # mkstemp creates 0600; give the artefact the permissions a plain open() would
            # (group members on a shared cluster file system must read results).
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    except BaseException as exc:
        # An error already naming a (nested) artefact, or an interrupt, passes unchanged.
        plain = isinstance(exc, Exception) and not isinstance(exc, OutputWriteError)
        code = _disk_errno(exc, target.parent, body=in_body) if plain else None
        with contextlib.suppress(OSError):
            if tmp_path.is_dir():
                import shutil

                shutil.rmtree(tmp_path)
            else:
                tmp_path.unlink()
        if code is None:
            raise
        raise _write_error(target, code, exc) from exc


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


_CHUNK = 1 << 22


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content, cached in a ``<file>.sha256`` sidecar.

    Large datasets are hashed once: the sidecar stores size and mtime and is reused
    while they match, so that every downstream job can tag its inputs by content
    without re-reading tens of GB.
    """
    path = Path(path)
    st = path.stat()
    sidecar = path.with_name(path.name + ".sha256")
    key = f"{st.st_size}:{st.st_mtime_ns}"
    try:
        cached_key, cached = sidecar.read_text().split()
        if cached_key == key:
            return cached
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    digest = h.hexdigest()
    if st.st_size > 64 * _CHUNK:  # only worth a sidecar for large files
        with contextlib.suppress(OSError):
            write_text_atomic(sidecar, f"{key} {digest}\n")
    return digest


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def content_digest(obj: Mapping[str, Any]) -> str:
    """SHA-256 (64 hex digits) of a mapping in canonical JSON (key order ignored)."""
    text = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def config_digest(config: Mapping[str, Any]) -> str:
    """Short SHA-256 of a configuration mapping in canonical JSON (key order ignored)."""
    return content_digest(config)[:16]
