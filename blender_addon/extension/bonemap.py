"""Bone maps: which rig bone each model joint drives, matched automatically by name."""
from __future__ import annotations

import re
from typing import Iterable

# Side markers as rigs spell them: a Left/Right word anywhere, or a lone L/R set off by a separator at either
# end (upper_arm.L, l_hand), or glued to a capital (LHand). Tried in order; the first that matches wins.
_SIDE_PATTERNS = (
    re.compile(r"(left|right)", re.IGNORECASE),
    re.compile(r"[._\- ]([lr])$", re.IGNORECASE),
    re.compile(r"^([lr])[._\- ]", re.IGNORECASE),
    re.compile(r"^([LR])(?=[A-Z])"),
)


def name_key(name: str) -> str:
    """A spelling-independent key: no namespace (mixamorig:), case, separators, side spelling or leading zeros."""
    core = re.split(r"[:|]", name)[-1]
    side = ""
    for pattern in _SIDE_PATTERNS:
        m = pattern.search(core)
        if m:
            side = "left" if m.group(1)[0] in "lL" else "right"
            core = core[:m.start()] + core[m.end():]
            break
    core = re.sub(r"[^a-z0-9]", "", core.lower())
    core = re.sub(r"0+(?=\d)", "", core)  # spine_01 and Spine1 are the same bone
    return f"{side}:{core}"


def auto_match(joints: Iterable[str], bones: Iterable[str]) -> dict[str, str]:
    """Each joint -> the bone of the same name (exact first, then by name_key); "" where none; a bone used once."""
    bones = list(bones)
    by_key: dict[str, str] = {}
    for bone in bones:
        by_key.setdefault(name_key(bone), bone)
    exact = set(bones)
    used: set[str] = set()
    out: dict[str, str] = {}
    joints = list(joints)
    # Exact names claim their bones first, so a fuzzy match never steals a bone another joint names exactly.
    for joint in joints:
        if joint in exact:
            out[joint] = joint
            used.add(joint)
    for joint in joints:
        if joint in out:
            continue
        bone = by_key.get(name_key(joint), "")
        if bone in used:
            bone = ""
        out[joint] = bone
        used.add(bone)
    return {joint: out[joint] for joint in joints}
