"""Writing files so that a reader never sees half of one: a temporary file, then a rename; and a folder lock
for writers that read, change and replace a file that other writers may be changing too.

Temporary files are named .NAME.PID.RANDOM.tmp beside NAME: a writer that was killed (SIGKILL, power loss)
cannot delete its own, so the next write of NAME deletes those whose process is gone.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

# A temporary file without a process id (written before they carried one) counts as stale after this long.
UNNAMED_STALE_S = 3600.0


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to path through a temporary file in the same folder, then rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _usual_mode(tmp: str) -> None:
    # mkstemp makes owner-only files; give the result the mode a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or not a pid at all): not ours to judge
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files (or staged folders) of path left by writers that died before renaming them.

    Returns those deleted.
    """
    path = Path(path)
    removed = []
    try:
        # .NAME.PID..., and ..NAME.PID... where a writer wrote through another's temporary name.
        name = path.name.lstrip(".")
        candidates = [p for p in path.parent.glob(f".*{_glob_escape(name)}.*.tmp*")
                      if p.name.lstrip(".").startswith(name + ".")]
    except OSError:
        return removed
    for tmp in candidates:
        pid_text = tmp.name.lstrip(".")[len(name) + 1:].split(".", 1)[0]
        try:
            stale = not _alive(int(pid_text)) if pid_text.isdigit() else \
                time.time() - tmp.stat().st_mtime > UNNAMED_STALE_S
            if stale and tmp.is_dir() and not tmp.is_symlink():  # a staged directory (trainer/staging.py)
                shutil.rmtree(tmp)
                removed.append(tmp)
            elif stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass  # gone already, or not ours to delete
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _temporary(path: Path, suffix: str = "") -> tuple[int, str]:
    """A new temporary file beside path (after sweeping stale ones): its descriptor and name."""
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + suffix, dir=path.parent)
    _usual_mode(tmp)
    return fd, tmp


def probe_writable(folder: str | os.PathLike) -> str | None:
    """None when a new file can be created in folder; otherwise why not (permission denied, read-only, ...)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".motionvae-probe.", suffix=".tmp", dir=folder)
    except OSError as e:
        return e.strerror or errno.errorcode.get(e.errno or 0, str(e))
    os.close(fd)
    os.unlink(tmp)
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to path through a temporary file in the same folder, then rename."""
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside path for a writer that needs a file name; renamed onto path on success.

    suffix keeps writers that append an extension (numpy adds .npz) writing to the temporary name.
    """
    path = Path(path)
    fd, tmp = _temporary(path, suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths for several outputs, all renamed onto paths only when the block succeeds (else deleted).

    Each temporary name ends like its target (a writer may pick its format from the suffix).
    """
    tmps: list[Path] = []
    try:
        for p in map(Path, paths):
            fd, tmp = _temporary(p, p.suffix)
            os.close(fd)
            tmps.append(Path(tmp))
        yield tmps
        for tmp, p in zip(tmps, paths):
            os.replace(tmp, p)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on folder (waiting for other holders); a no-op where flock is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent exports into one folder are then unguarded
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
