"""What every command line of the toolkit shares: one-line errors, number and size checks made before any
work starts, output paths checked up front, optional extras named when missing, and temp files that go away
when a command is stopped.

A CLI's contract for bad input: one line on stderr naming the file (and line or field) and what was expected,
exit code 2, no output file and no temporary file left behind.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import signal
import sys
import types
from pathlib import Path
from typing import Any, Iterable, Sequence

# Optional packages: module -> (pip extra of this project, what needs it).
EXTRAS = {
    "pygltflib": ("gltf", ".glb output"),
    "matplotlib": ("preview", "previews"),
    "tqdm": ("progress", "progress bars"),
    "websockets": ("bridge", "the Godot bridge"),
    "torch": ("train", "training and export"),
}
PACKAGE = "motionvae-toolkit"
# Refuse work whose arrays would take more than this share of the machine's memory.
MEMORY_SHARE = 0.5
FALLBACK_MEMORY_BYTES = 8 << 30  # where the physical memory cannot be read


class UsageError(ValueError):
    """A bad command-line argument or input path; the message says which and what was expected."""


def fail(exc: BaseException | str) -> int:
    """Print one error line on stderr and return exit code 2."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__  # one line, whatever the message held
    print(f"error: {text}", file=sys.stderr)
    return 2


def write_error(e: OSError, path: str | os.PathLike) -> str:
    """The one-line message of a failed file operation: the file, then the system's reason."""
    return f"{e.filename or path}: {e.strerror or e}"


def _one_line_error(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(2, f"{parser.prog}: error: {' '.join(message.split())} (see --help)\n")


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make parser (and its subcommands) report bad arguments in one line with exit code 2, no usage block."""
    parser.error = types.MethodType(_one_line_error, parser)  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                one_line_errors(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse argv with one-line errors; from a real command line (argv None) SIGTERM also cleans up temp files."""
    if argv is None:
        stop_cleanly_on_sigterm()
    return one_line_errors(parser).parse_args(argv)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def stop_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the finally blocks of atomic writes delete their temp files."""
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_exit)
    except ValueError:  # not the main thread: leave signals alone
        pass


def number(value: Any, name: str, low: float = -math.inf, high: float = math.inf, *, integer: bool = False,
           low_open: bool = False) -> float:
    """value checked to be a finite number (an integer if asked) in [low, high] (low excluded if low_open)."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        isinstance(value, int) or math.isfinite(value))
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        lo = "(" if low_open else "["
        where = f" in {lo}{low:g}, {high:g}]" if math.isfinite(low) or math.isfinite(high) else ""
        if math.isfinite(low) and not math.isfinite(high):
            where = f" above {low:g}" if low_open else f" of at least {low:g}"
        shown = value if not isinstance(value, str) else repr(value)
        raise UsageError(f"{name} must be {kind}{where}, got {shown}")
    return int(value) if integer else float(value)


def total_memory() -> int:
    """Bytes of physical memory (a fixed guess where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_MEMORY_BYTES


def check_memory(nbytes: float, what: str) -> None:
    """Refuse work whose arrays would need more than half of this machine's memory, before allocating them."""
    budget = MEMORY_SHARE * total_memory()
    if not nbytes <= budget:
        raise UsageError(f"{what} would need about {_size(nbytes)} of memory, more than the "
                         f"{_size(budget)} allowed here (half of this machine's); ask for less")


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}" if math.isfinite(nbytes) else "unbounded"
    return f"{nbytes / 1e3:.3g} kB"


def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """An existing regular file to read (a folder, FIFO or device is refused by name)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        raise UsageError(f"{p}: is a folder, expected a {what}")
    if p.exists():
        raise UsageError(f"{p}: is a {_kind(p)}, expected a regular {what}")
    raise UsageError(f"{p}: no such {what}")


def _kind(p: Path) -> str:
    if p.is_fifo():
        return "FIFO (named pipe)"
    if p.is_socket():
        return "socket"
    if p.is_block_device() or p.is_char_device():
        return "device"
    return "special file"


def check_output_file(path: str | os.PathLike, suffixes: Iterable[str] | None = None, what: str = "output") -> Path:
    """A path a file can be written to: known suffix, not a folder, in an existing folder that accepts files."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{p}: is a folder; give the {what} a file name")
    if suffixes is not None:
        suffixes = tuple(suffixes)
        if not any(p.name.lower().endswith(s) for s in suffixes):
            shown = repr(p.suffix) if p.suffix else "(no suffix)"
            raise UsageError(f"{p}: unknown {what} format {shown} (expected {', '.join(suffixes)})")
    if p.exists() and not p.is_file():
        raise UsageError(f"{p}: is a {_kind(p)}, not a file the {what} can replace")
    check_output_folder(p.parent, p)
    return p


def check_output_folder(folder: Path, target: Path | None = None) -> None:
    """folder exists and accepts new files (tried with a temporary file, which also catches read-only mounts)."""
    shown = target if target is not None else folder
    if not folder.exists():
        raise UsageError(f"{shown}: the output folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"{shown}: {folder} is not a folder")
    from .atomic import probe_writable

    problem = probe_writable(folder)
    if problem:
        raise UsageError(f"{shown}: cannot write into {folder} ({problem})")


def require(module: str, purpose: str | None = None) -> None:
    """Fail in one line, before any work, when an optional package is missing; the message names its extra."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{purpose or EXTRAS.get(module, (None, module))[1]} needs {_missing(module)}")


def _missing(module: str) -> str:
    """'MODULE, which is not installed: pip install ...' naming the extra of this project that brings it."""
    extra = EXTRAS.get(module, (None,))[0]
    return f"{module}, which is not installed: " + (f"pip install '{PACKAGE}[{extra}]'" if extra
                                                    else f"pip install {module}")


def progress(items: Iterable, enabled: bool = True, **kwargs: Any) -> Iterable:
    """items wrapped in a tqdm progress bar when tqdm is installed and enabled; the bare items otherwise."""
    if not enabled or importlib.util.find_spec("tqdm") is None:
        return items
    from tqdm import tqdm

    return tqdm(items, **kwargs)


def exit_when_missing(package: str, module: str, free: tuple[str, ...] = ()) -> None:
    """Stop `python -m PACKAGE.COMMAND` in one line (exit 2) when the command needs a module that is missing.

    Called from a package's __init__, which runs before the command's own imports would fail with a
    traceback; commands named in free run without the module.
    """
    argv = list(getattr(sys, "orig_argv", []))[1:]
    target = next((a[2:] or (argv[i + 1] if i + 1 < len(argv) else "") for i, a in enumerate(argv)
                   if a.startswith("-m")), "")
    if not target.startswith(package + ".") or target.split(".")[1] in free:
        return
    if importlib.util.find_spec(module) is None:
        sys.exit(fail(f"python -m {target} needs {_missing(module)}"))
