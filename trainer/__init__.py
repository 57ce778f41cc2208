"""Training (torch): prepare, train, evaluate, export, control policies and the motion tokenizer.

prepare and procedural need only numpy; the other commands need the [train] extra.
"""
from runtime.cli import exit_when_missing

exit_when_missing("trainer", "torch", free=("prepare", "procedural"))
