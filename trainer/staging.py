"""Writing a model directory whole: built in a folder beside its destination, then renamed into place."""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runtime.model import ModelError


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """An empty folder beside out that replaces out when the block succeeds; removed when it fails.

    Readers of out see the old directory or the new one, never half of either.
    """
    if not out.parent.is_dir():
        raise ModelError(f"{out}: the parent folder {out.parent} does not exist")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
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
