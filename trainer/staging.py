"""Writing a model directory whole: built in a folder beside its destination, then renamed into place."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runtime.atomic import remove_stale_temporaries
from runtime.cli import UsageError, check_output_folder
from runtime.model import ModelError


def check_model_out(out: Path, name: str | None) -> None:
    """A model directory can be written at out under a name, checked before any work (UsageError if not)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder; --out names the model directory to write")
    check_output_folder(out.parent, out)
    if not (name if name is not None else out.name).strip():
        raise UsageError(f"{out}: the model needs a name (give --name)")


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """An empty folder beside out that replaces out when the block succeeds; removed when it fails.

    Readers of out see the old directory or the new one, never half of either.
    """
    if not out.parent.is_dir():
        raise ModelError(f"{out}: the parent folder {out.parent} does not exist")
    remove_stale_temporaries(out)  # folders of an export that was killed
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes an owner-only folder; a model directory is readable like any other
    try:
        yield staging
        _replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(new: Path, out: Path) -> None:
    """Move new onto out; an existing out is only removed once new is in place."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    new.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
