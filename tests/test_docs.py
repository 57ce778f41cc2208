"""The docs and the code agree: every command in the README, docs/ and the engines' READMEs names a module or
script that exists and whose parser takes its options, every relative link and anchor leads somewhere, every
repository path and dotted name in backticks exists, and every Python example runs."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_cli_help import _Built, build, parsers

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "godot_bridge" / "README.md",
        ROOT / "godot_bridge" / "PROTOCOL.md", ROOT / "blender_addon" / "README.md"]
OUR_PACKAGES = ("runtime", "trainer", "godot_bridge", "blender_addon")
IMPORTED_PACKAGES = ("runtime", "trainer", "godot_bridge")  # dotted names under these are imported and looked up
SHELL_STOPS = ("|", "||", "&&", ";", "&")
FILE_SUFFIXES = (".md", ".sh", ".py", ".gd", ".toml", ".cfg", ".tscn", ".godot")  # a bare name like these is a claim
NEEDS = "# needs:"  # first line of a Python example that cannot run on its own (it names what it needs)
SHELL_FENCES = ("", "bash", "sh", "shell", "console")  # other fenced blocks (text, toml, json) hold no commands
QUOTED = ("error:", "note:")  # an inline span quoting what a command printed is not a command

PYTHON = re.compile(r"(?:^|(?<=[\s(`]))(?:\S*/)?python3?(?:\.\d+)?\s+(?P<what>-m\s+[\w.]+|[\w./-]+\.py)(?=\s|$)(?P<rest>.*)")
BASH = re.compile(r"(?:^|(?<=[\s(`]))bash\s+(?P<script>[\w./-]+\.sh)(?P<rest>.*)")
FENCE = re.compile(r"^\s*```(?P<lang>\S*)")
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
PATH = re.compile(r"^[\w.~-]+(?:/[\w.*<>-]*)*$")
DOTTED = re.compile(rf"^(?:{'|'.join(OUR_PACKAGES)})(?:\.\w+)+$")


@dataclass(frozen=True)
class Snippet:
    """A piece of code in a doc: a shell line of a code block, a Python block, or an inline code span."""

    kind: str  # "shell", "python" or "inline"
    text: str
    line: int


def snippets(text: str) -> list[Snippet]:
    """The code of a Markdown page: fenced blocks, indented command lines, and inline spans outside fences
    (a span may run over a line break, as Markdown allows within a paragraph)."""
    found, block, lang, start, para = [], None, "", 0, []
    for i, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence or not line.strip():
            found += _spans(para)
            para = []
        if fence and block is None:
            block, lang, start = [], fence["lang"], i + 1
        elif fence:
            if lang == "python":
                found.append(Snippet("python", "\n".join(block), start))
            elif lang in SHELL_FENCES:
                found += [Snippet("shell", cmd, n) for cmd, n in _joined(block, start)]
            block = None
        elif block is not None:
            block.append(line)
        elif line.strip():
            if line.startswith("    ") and re.match(r"\s*(\S*python|nice |bash |OUT=)", line):
                found.append(Snippet("shell", line.strip(), i))  # an indented code block
            para.append((i, line))
    return found + _spans(para)


def _spans(para: list[tuple[int, str]]) -> list[Snippet]:
    """The inline code spans of a paragraph's (line number, text) lines, line breaks inside a span made spaces."""
    if not para:
        return []
    text = "\n".join(line for _, line in para)
    return [Snippet("inline", " ".join(m[1].split()), para[0][0] + text.count("\n", 0, m.start()))
            for m in INLINE.finditer(text) if not m[1].lstrip().startswith(QUOTED)]


def _joined(lines: list[str], start: int) -> list[tuple[str, int]]:
    """Shell lines with backslash continuations joined, each with its first line number."""
    out, current, first = [], "", start
    for n, line in enumerate(lines, start):
        if not current:
            first = n
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
        else:
            out.append((current + line, first))
            current = ""
    if current:
        out.append((current, first))
    return out


def _words(rest: str) -> list[str]:
    """The arguments of a command line: shell words up to a comment, pipe or redirection; synopsis brackets
    and ellipses dropped."""
    words = []
    for word in shlex.split(rest, comments=True):
        if word in SHELL_STOPS or word[0] in "<>" or word.startswith("2>"):
            break
        word = word.strip("[]")
        if word and word != "...":
            words.append(word)
    return words


@dataclass(frozen=True)
class Command:
    """A command a doc gives: a module (python -m), a script (python FILE.py) or a shell script (bash FILE.sh)."""

    kind: str  # "module", "script" or "shell"
    target: str
    argv: tuple[str, ...]


def commands(code: str) -> list[Command]:
    """Every python and bash command in a line of code (ValueError when its quoting does not close)."""
    found = []
    for m in PYTHON.finditer(code):
        what = m["what"]
        kind, target = ("module", what.split()[1]) if what.startswith("-m") else ("script", what)
        found.append(Command(kind, target, tuple(_words(m["rest"]))))
    for m in BASH.finditer(code):
        found.append(Command("shell", m["script"], tuple(_words(m["rest"]))))
    return found


class _Refused(Exception):
    """The parser refused a command line."""


class _Helped(Exception):
    """The parser printed help and would have exited 0."""


def _exit(self, status=0, message=None):
    if status == 0:
        raise _Helped()
    raise _Refused(" ".join((message or "").split()))


def _error(self, message):
    raise _Refused(message)


def refusal(parser: argparse.ArgumentParser, argv: list[str], strict: bool = True) -> str | None:
    """What parser says against argv (an unknown option, a bad value, a missing argument), or None.

    Not strict, required arguments may be left out (a mention in prose), but what is given must parse.
    """
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.setattr(argparse.ArgumentParser, "exit", _exit)
        mp.setattr(argparse.ArgumentParser, "error", _error)
        for p in parsers(parser):
            mp.setattr(p, "allow_abbrev", False)  # docs spell options out: --frame would only work by luck
            for action in p._actions if not strict else ():
                mp.setattr(action, "required", False)
        try:
            parser.parse_args(argv)
        except _Helped:
            return None
        except _Refused as e:
            return str(e)
    return None


@cache
def module_parser(name: str) -> argparse.ArgumentParser | None:
    """The parser of `python -m name` (None for modules outside this project); LookupError if there is none."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        raise LookupError(f"no module {name}")
    if name.split(".")[0] not in OUR_PACKAGES:
        return None
    if spec.submodule_search_locations is not None:  # a package runs its __main__
        name += ".__main__"
        if importlib.util.find_spec(name) is None:
            raise LookupError(f"package {name[:-9]} cannot be run with -m (no __main__)")
    with pytest.MonkeyPatch.context() as mp:
        try:
            return build(name, mp)
        except BaseException as e:  # noqa: BLE001 - whatever stops main() before it parses
            raise LookupError(f"{name} builds no argparse parser ({e.__class__.__name__})") from None


@cache
def script_parser(path: Path) -> argparse.ArgumentParser | None:
    """The parser a script's main() builds (None when it reads no options); LookupError if it is missing."""
    if not path.is_file():
        raise LookupError(f"no script {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if "ArgumentParser" not in path.read_text(encoding="utf-8"):
        return None
    saved_env, saved_path = dict(os.environ), list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it runs
        spec.loader.exec_module(module)

        def caught(self, *args, **kwargs):
            raise _Built(self)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(argparse.ArgumentParser, "parse_args", caught)
            try:
                module.main([]) if inspect.signature(module.main).parameters else module.main()
            except _Built as built:
                return built.parser
    finally:  # scripts set thread counts and sys.path for themselves when they run
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
    raise LookupError(f"{path.name}'s main() returned without parsing its arguments")


def shell_forwarding(path: Path) -> tuple[str, list[str]] | None:
    """(module, fixed arguments) when a shell script passes its own arguments on to `python -m module`."""
    m = re.search(r"-m\s+([\w.]+)\s+([^\n]*?)\"\$@\"", path.read_text(encoding="utf-8"))
    return (m[1], shlex.split(m[2])) if m else None


def command_problem(cmd: Command, strict: bool, root: Path = ROOT) -> str | None:
    """Why a command of a doc would not run as written, or None. Not strict (inline mentions in prose):
    required arguments may be left out, but every option given must exist and take its value."""
    try:
        if cmd.kind == "module":
            parser = module_parser(cmd.target)
            argv = list(cmd.argv)
        elif cmd.kind == "script":
            parser = script_parser((root / cmd.target).resolve())
            argv = list(cmd.argv)
            if parser is None and any(a.startswith("-") for a in argv):
                return f"{cmd.target} reads no options, but is given {' '.join(argv)}"
        else:
            path = root / cmd.target
            if not path.is_file():
                return f"no script {cmd.target}"
            forward = shell_forwarding(path)
            if forward is None or forward[0].split(".")[0] not in OUR_PACKAGES:
                return None
            parser, argv = module_parser(forward[0]), forward[1] + list(cmd.argv)
    except LookupError as e:
        return str(e)
    if parser is None:
        return None
    said = refusal(parser, argv, strict)
    return None if said is None else f"{cmd.target} {' '.join(cmd.argv)}: {said}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m[1] or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file's headings (repeated headings get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"#{1,6}\s+(.*)", line)):
            s = slug(m[1])
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def link_problems(doc: Path, text: str) -> list[str]:
    """Relative links (and their #anchors) that lead nowhere."""
    found = []
    for i, line in enumerate(text.splitlines(), 1):
        for m in LINK.finditer(line):
            target = m["target"]
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check
            file, _, anchor = target.partition("#")
            path = (doc.parent / file) if file else doc
            if not path.exists():
                found.append(f"line {i}: link to {target}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                found.append(f"line {i}: link to {target}: no heading with that anchor in {path.name}")
    return found


@cache
def tracked(root: Path = ROOT) -> frozenset[str]:
    """Every file git tracks in the repository, plus the new docs (relative paths)."""
    listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    return frozenset(listed.splitlines()) | {str(p.relative_to(root)) for p in (root / "docs").glob("*")}


def path_problem(doc: Path, span: str, root: Path = ROOT) -> str | None:
    """A repository path in backticks that does not exist (paths to files users make are not claims)."""
    if not PATH.match(span) or span.startswith(("../", "~")):
        return None
    files = tracked(root)
    here = str(doc.parent.relative_to(root)) if doc.parent.is_relative_to(root) else None
    first = span.split("/")[0]
    under_here = {f[len(here) + 1:] for f in files if here not in (None, ".") and f.startswith(here + "/")}
    tops = {f.split("/")[0] for f in files} | {f.split("/")[0] for f in under_here}
    if "/" in span.rstrip("/"):
        if first not in tops:
            return None
    elif not span.endswith(FILE_SUFFIXES) and first not in tops:
        return None
    wanted = span.rstrip("/")
    for base in (root, doc.parent):
        if "*" in wanted and any(base.glob(wanted)) or (base / wanted).exists():
            return None
    if "/" not in wanted and any(Path(f).name == wanted for f in files):
        return None  # a bare file name the sentence places
    return f"`{span}`: no such file in the repository"


def dotted_problem(span: str, root: Path = ROOT) -> str | None:
    """A dotted name of this project (`runtime.model.check_meta`) that names no module or attribute."""
    if not DOTTED.match(span):
        return None
    parts = span.split(".")
    if parts[0] not in IMPORTED_PACKAGES:  # the Blender extension imports bpy: look for the file only
        for i in range(len(parts), 0, -1):
            base = root.joinpath(*parts[:i])
            if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
                return None
        return f"`{span}`: no such module"
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return f"`{span}`: {'.'.join(parts[:i])} has no {'.'.join(parts[i:])}"
            obj = getattr(obj, name)
        return None
    return f"`{span}`: no such module"


def doc_problems(doc: Path, root: Path = ROOT) -> list[str]:
    """Everything in a doc that disagrees with the code (except its Python examples, which run separately)."""
    text = doc.read_text(encoding="utf-8")
    found = link_problems(doc, text)
    for s in snippets(text):
        if s.kind == "python":
            continue
        try:
            cmds = commands(s.text)
        except ValueError as e:
            found.append(f"line {s.line}: cannot split {s.text!r} ({e})")
            continue
        for cmd in cmds:
            problem = command_problem(cmd, strict=s.kind == "shell", root=root)
            if problem:
                found.append(f"line {s.line}: {problem}")
        if s.kind == "inline" and not cmds:
            problem = path_problem(doc, s.text, root) or dotted_problem(s.text, root)
            if problem:
                found.append(f"line {s.line}: {problem}")
    return found


def python_examples() -> list[tuple[str, Snippet]]:
    """Every Python block of the docs that can run on its own, with where it is."""
    out = []
    for doc in DOCS:
        for s in snippets(doc.read_text(encoding="utf-8")):
            if s.kind == "python" and not s.text.lstrip().startswith(NEEDS):
                out.append((f"{doc.relative_to(ROOT)}:{s.line}", s))
    return out


def test_the_docs_are_found():
    names = {str(d.relative_to(ROOT)) for d in DOCS}
    assert {"README.md", "docs/runtime.md", "docs/troubleshooting.md", "godot_bridge/PROTOCOL.md"} <= names
    assert all(d.is_file() for d in DOCS)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_commands_links_and_paths_agree_with_the_code(doc):
    found = doc_problems(doc)
    assert not found, f"{doc.relative_to(ROOT)}:\n" + "\n".join(found)


@pytest.mark.parametrize("where,snippet", python_examples(), ids=lambda x: x if isinstance(x, str) else "")
def test_python_examples_run(where, snippet, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", snippet.text], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{where}:\n{done.stderr[-3000:]}"


def test_every_doc_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {m["target"].partition("#")[0] for m in LINK.finditer(readme)}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in linked]
    assert not missing, missing


# ---- the checker itself -----------------------------------------------------------------------------------

BROKEN = """# A page

## Real heading

```bash
.venv/bin/python -m runtime.bake clip.npz --frames 10 --no-such-option 3
python -m runtime.bake clip.npz --providers tpu
python -m runtime.bake clip.npz --frame 3   # an abbreviation works in argparse, by luck
python -m runtime.nope clip.npz
python -m runtime.bake clip.npz \\
    --frames ten
python benchmarks/no_such_benchmark.py
python benchmarks/policy_eval.py --tasks dance
bash scripts/demo.sh --fames 900
python -m trainer.export --name x   # run is missing
python -m runtime.bake ok.npz --frames 10 --seed 3 | tail -1   # fine
```

```text
python -m runtime.bake diagram --not-a-command
```

Inline: `python -m runtime.tokens encode --bogus`, `python -m trainer.export` (a mention: fine),
`error: python -m trainer.train needs torch` and `python -m runtime.bake: error: unrecognized arguments: --x`
(quoted output: fine), a span over a line break (`python -m runtime.bake clip.npz
--bogus-two`),
`runtime/no_such_file.py`, `runtime/bake.py` (fine), `tests/test_fuzz_*.py` (fine), `models/walk` (a user's),
`runtime.model.no_such_function`, `runtime.model.load_model` (fine), `NOSUCH.md`.
[a dead link](docs/nowhere.md), [a dead anchor](#imaginary), [a live anchor](#real-heading),
[outside](https://example.com/x).
"""


def test_the_checker_catches_what_it_should(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(BROKEN, encoding="utf-8")
    found = "\n".join(doc_problems(doc))
    for expected in ("unrecognized arguments: --no-such-option 3", "invalid choice: 'tpu'",
                     "unrecognized arguments: --frame 3", "no module runtime.nope",
                     "invalid int value: 'ten'", "no script", "no_such_benchmark.py", "invalid choice: 'dance'",
                     "scripts/demo.sh --fames 900: unrecognized arguments: --fames",
                     "the following arguments are required: run", "encode --bogus: unrecognized arguments",
                     "`runtime/no_such_file.py`: no such file", "runtime.model has no no_such_function",
                     "`NOSUCH.md`: no such file", "docs/nowhere.md: no such file",
                     "#imaginary: no heading with that anchor", "unrecognized arguments: --bogus-two"):
        assert expected in found, f"missing {expected!r} in:\n{found}"
    for fine in ("tail", "runtime/bake.py`", "test_fuzz_", "models/walk", "load_model", "real-heading",
                 "example.com", "trainer.export :", "diagram", "needs torch", "--x"):
        assert fine not in found, f"{fine!r} was reported:\n{found}"
    assert len(doc_problems(doc)) == 16


def test_slugs_follow_github():
    assert slug("Planted feet: foot locking") == "planted-feet-foot-locking"
    assert slug("The `--control` file") == "the---control-file"
    assert slug("Speed (`benchmarks/runtime_step.py`, 2-core CPU)") == "speed-benchmarksruntime_steppy-2-core-cpu"
