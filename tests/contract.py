"""The CLI contract for bad input, as test helpers: run a CLI's main(argv) in-process and check that it either
succeeded with a usable output or refused in one line on stderr naming the culprit, with exit code 2, no
output file and no temporary file. Fuzz tallies are collected here and printed at the end of the run."""
from __future__ import annotations

import contextlib
import io
import os
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

# category -> Counter of outcomes ("accepted", "refused"); conftest prints it in the terminal summary.
TALLIES: dict[str, Counter] = defaultdict(Counter)


@dataclass
class Outcome:
    """What a CLI run gave: exit code, stdout and stderr."""

    code: int
    out: str
    err: str


def run_main(main: Callable[[list[str]], int], argv: Sequence[str]) -> Outcome:
    """main(argv) in this process, with stdout and stderr captured; argparse's SystemExit becomes the code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # a crash: reported by check_refusal with the case that caused it
            code = -1
            traceback.print_exc(file=err)
    return Outcome(code, out.getvalue(), err.getvalue())


def temporaries(folder: Path) -> list[Path]:
    """Temporary files (and staged folders) that atomic writers leave while they work."""
    return [p for p in folder.rglob(".*") if ".tmp" in p.name or p.name.startswith(".motionvae-probe")]


def check_refusal(result: Outcome, case: str, culprits: Sequence[str], outputs: Sequence[Path],
                  folder: Path) -> str:
    """The contract for bad input: exit 2, one stderr line naming a culprit, no output, no temp file."""
    lines = result.err.strip().splitlines()
    assert result.code == 2, f"{case}: exit code {result.code}, stderr {result.err[-1500:]!r}"
    assert len(lines) == 1 and "Traceback" not in result.err, f"{case}: stderr is not one line: {result.err!r}"
    assert "error:" in lines[0], f"{case}: {lines[0]!r}"
    assert any(c in lines[0] for c in culprits), f"{case}: {lines[0]!r} names none of {list(culprits)}"
    assert not result.out.strip(), f"{case}: printed {result.out!r} while refusing"
    for path in outputs:
        assert not os.path.lexists(path), f"{case}: {path} was written although the command failed"
    assert not temporaries(folder), f"{case}: temporary files left: {temporaries(folder)}"
    return lines[0]


def tally(category: str, accepted: bool) -> None:
    """Count one fuzz case."""
    TALLIES[category]["accepted" if accepted else "refused"] += 1


def summary() -> list[str]:
    """One line per fuzz category: cases, accepted with a valid result, refused by the contract."""
    return [f"{name}: {sum(c.values())} cases, {c['accepted']} accepted with a valid result, "
            f"{c['refused']} refused in one line (exit 2, nothing written)" for name, c in sorted(TALLIES.items())]
