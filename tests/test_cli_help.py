"""Every command-line option explains itself: a help line, its choices, and its default where it has one."""
from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("runtime", "trainer", "godot_bridge", "blender_addon")
QUIET_ACTIONS = (argparse._HelpAction, argparse._VersionAction, argparse._StoreTrueAction,
                 argparse._StoreFalseAction, argparse._CountAction)


def cli_modules() -> list[str]:
    """Every module of the packages that builds an argparse parser (found by reading the source)."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            # A command builds a parser and has a main(); runtime/cli.py only helps them parse.
            if re.search(r"ArgumentParser\b", text) and re.search(r"^def main\(", text, re.M):
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


def build(module_name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a CLI module builds: from build_parser(), else caught as its main() starts parsing."""
    module = importlib.import_module(module_name)
    if hasattr(module, "build_parser"):
        return module.build_parser()

    def caught(self, *args, **kwargs):
        raise _Built(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
    with pytest.raises(_Built) as built:
        module.main([])
    return built.value.parser


def parsers(parser: argparse.ArgumentParser):
    """A parser and its subcommands' parsers, recursively."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def problems(parser: argparse.ArgumentParser) -> list[str]:
    """What the help of a parser (and its subcommands) lacks, one line per argument."""
    found = []
    for p in parsers(parser):
        formatter = p._get_formatter()
        for action in p._actions:
            name = "/".join(action.option_strings) or action.dest
            where = f"{p.prog} {name}"
            if isinstance(action, argparse._SubParsersAction):
                helped = {c.dest for c in action._choices_actions if c.help}
                found += [f"{p.prog} {name}: no help" for name in action.choices if name not in helped]
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                found.append(f"{where}: no help")
                continue
            text = formatter._expand_help(action)
            missing = [str(c) for c in action.choices or () if str(c) not in text]
            if missing:
                found.append(f"{where}: the help does not list {', '.join(missing)}")
            if (not isinstance(action, QUIET_ACTIONS) and action.default not in (None, [], argparse.SUPPRESS)
                    and "default" not in text):
                found.append(f"{where}: the help does not say its default ({action.default!r})")
    return found


MODULES = cli_modules()


def test_every_cli_is_found():
    expected = {"trainer.prepare", "trainer.train", "trainer.evaluate", "trainer.export", "trainer.policy.__main__",
                "trainer.train_tokenizer", "trainer.tokenizer_export", "trainer.procedural", "runtime.bake",
                "runtime.tokens", "godot_bridge.serve", "blender_addon.build"}
    assert expected <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_every_option_has_help_with_choices_and_default(module, monkeypatch):
    parser = build(module, monkeypatch)
    found = problems(parser)
    assert not found, "\n".join(found)
    assert parser.format_help()  # every %-expansion in the help lines works


def test_the_check_catches_what_it_should():
    p = argparse.ArgumentParser(prog="demo")
    p.add_argument("--bare", type=int)
    p.add_argument("--mode", choices=["a", "b"], help="a mode (default a)", default="a")
    p.add_argument("--count", type=int, default=3, help="how many")
    p.add_argument("--fine", choices=["x", "y"], default="x", help="%(choices)s (default %(default)s)")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("go", help="start").add_argument("--speed", type=float, help="metres per second")
    sub.add_parser("stop")
    assert problems(p) == ["demo --bare: no help", "demo --mode: the help does not list b",
                           "demo --count: the help does not say its default (3)", "demo stop: no help"]
