"""Which rig bone each model joint drives: name presets, then the hierarchy and rest directions decide.

A rig is described by its bones' names, parents and rest head positions in the model's axes (Y up, the
character facing +Z, its left towards +X), in any unit. Both skeletons (the model's and the rig's) are read the
same way: a preset of bone names (the one matching most names) says what each named bone is, and the hierarchy
finds the body's chains: the hips (the bone the legs and the spine branch from), each leg (the chain from the
hips downwards), the chest (the first spine bone the arms branch from), each arm (the chain from the chest
sideways) and the neck. Inside a chain a bone named by the preset keeps its part when it sits in its place;
the rest is found from the chain: thigh and shin (upper arm and forearm) are the two consecutive bones that
span furthest, foot and toe (hand) follow them, and a collarbone is the arm chain's first bone off the spine
when the upper arm is not that bone. Bones between two matched ones (CMU's LHipJoint, lowerneck, Rigify's
twist segments) are matched to nothing: they are in-between bones and move with their parents.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .bone_alignment import orthonormal_frames
from .skeleton import Skeleton

SIDES = {"L": ("Left", "l", "L"), "R": ("Right", "r", "R")}  # {Side}, {s}, {S} in a preset's names
LIMB_PARTS = ("shoulder", "upper_arm", "forearm", "hand", "thigh", "shin", "foot", "toe")
CENTRE_PARTS = ("hips", "neck", "head")
ARM_FROM_SPINE = 0.3  # an arm reaches sideways at least this times the hips-to-bone distance from the spine
MIN_SPAN_M = 1e-4  # joints closer than this (in model metres) give no direction
UPPER_ARM_OUT = 0.4  # an upper arm starts at least this times the hip joints' spacing out from the spine

# Bone names of each convention, per body part; "spine" lists the chain from the hips up to the chest.
PRESETS: dict[str, dict[str, object]] = {
    "model": {"hips": "Hips", "spine": ("Spine", "Spine1", "Spine2"), "neck": "Neck", "head": "Head",
              "shoulder": "{Side}Shoulder", "upper_arm": "{Side}Arm", "forearm": "{Side}ForeArm",
              "hand": "{Side}Hand", "thigh": "{Side}UpLeg", "shin": "{Side}Leg", "foot": "{Side}Foot",
              "toe": "{Side}ToeBase"},
    "mixamo": {"hips": "mixamorig:Hips", "spine": ("mixamorig:Spine", "mixamorig:Spine1", "mixamorig:Spine2"),
               "neck": "mixamorig:Neck", "head": "mixamorig:Head", "shoulder": "mixamorig:{Side}Shoulder",
               "upper_arm": "mixamorig:{Side}Arm", "forearm": "mixamorig:{Side}ForeArm",
               "hand": "mixamorig:{Side}Hand", "thigh": "mixamorig:{Side}UpLeg", "shin": "mixamorig:{Side}Leg",
               "foot": "mixamorig:{Side}Foot", "toe": "mixamorig:{Side}ToeBase"},
    "rigify": {"hips": "DEF-spine", "spine": ("DEF-spine.001", "DEF-spine.002", "DEF-spine.003"),
               "neck": "DEF-spine.004", "head": "DEF-spine.006", "shoulder": "DEF-shoulder.{S}",
               "upper_arm": "DEF-upper_arm.{S}", "forearm": "DEF-forearm.{S}", "hand": "DEF-hand.{S}",
               "thigh": "DEF-thigh.{S}", "shin": "DEF-shin.{S}", "foot": "DEF-foot.{S}", "toe": "DEF-toe.{S}"},
    "unreal": {"hips": "pelvis", "spine": ("spine_01", "spine_02", "spine_03", "spine_04", "spine_05"),
               "neck": "neck_01", "head": "head", "shoulder": "clavicle_{s}", "upper_arm": "upperarm_{s}",
               "forearm": "lowerarm_{s}", "hand": "hand_{s}", "thigh": "thigh_{s}", "shin": "calf_{s}",
               "foot": "foot_{s}", "toe": "ball_{s}"},
    "godot": {"hips": "Hips", "spine": ("Spine", "Chest", "UpperChest"), "neck": "Neck", "head": "Head",
              "shoulder": "{Side}Shoulder", "upper_arm": "{Side}UpperArm", "forearm": "{Side}LowerArm",
              "hand": "{Side}Hand", "thigh": "{Side}UpperLeg", "shin": "{Side}LowerLeg", "foot": "{Side}Foot",
              "toe": "{Side}Toes"},
    "cmu-bvh": {"hips": "Hips", "spine": ("LowerBack", "Spine", "Spine1"), "neck": "Neck", "head": "Head",
                "shoulder": "{Side}Shoulder", "upper_arm": "{Side}Arm", "forearm": "{Side}ForeArm",
                "hand": "{Side}Hand", "thigh": "{Side}UpLeg", "shin": "{Side}Leg", "foot": "{Side}Foot",
                "toe": "{Side}ToeBase"},
    "cmu-asf": {"hips": "Hips", "spine": ("lowerback", "Chest", "Chest2"), "neck": "Neck", "head": "Head",
                "shoulder": "{Side}Collar", "upper_arm": "{Side}Shoulder", "forearm": "{Side}Elbow",
                "hand": "{Side}Wrist", "thigh": "{Side}Hip", "shin": "{Side}Knee", "foot": "{Side}Ankle",
                "toe": "{Side}Toe"},
}


class RigMatchError(ValueError):
    """A rig whose body could not be found (no hips, no legs); the message says what is missing."""


@dataclass(frozen=True, eq=False)
class RigBones:
    """A rig's bones: names, parent indices (-1 for roots) and rest heads (B, 3) in the model's axes."""

    names: tuple[str, ...]
    parents: np.ndarray
    heads: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "parents", np.asarray(self.parents, np.int64).reshape(-1))
        object.__setattr__(self, "heads", np.asarray(self.heads, np.float64).reshape(-1, 3))
        if not (len(self.names) == len(self.parents) == len(self.heads)):
            raise ValueError(f"rig has {len(self.names)} names, {len(self.parents)} parents and "
                             f"{len(self.heads)} heads")

    @classmethod
    def from_skeleton(cls, skeleton: Skeleton) -> "RigBones":
        """A model skeleton as a rig: its joints at their rest positions, the root at its rest height."""
        return cls(skeleton.names, skeleton.parents, skeleton.rest_positions() + skeleton.offsets[0])

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """Children of each bone."""
        kids: list[list[int]] = [[] for _ in self.names]
        for b, p in enumerate(self.parents):
            if p >= 0:
                kids[p].append(b)
        return tuple(tuple(k) for k in kids)

    @cached_property
    def subtree(self) -> tuple[tuple[int, ...], ...]:
        """Each bone and every bone below it."""
        out: list[tuple[int, ...]] = [()] * len(self.names)
        for b in self._post_order():
            out[b] = (b,) + tuple(d for c in self.children[b] for d in out[c])
        return tuple(out)

    def _post_order(self) -> list[int]:
        order, stack = [], [b for b, p in enumerate(self.parents) if p < 0]
        while stack:
            b = stack.pop()
            order.append(b)
            stack.extend(self.children[b])
        return order[::-1]

    @cached_property
    def levels(self) -> tuple[np.ndarray, ...]:
        """The bones grouped by depth, roots first."""
        depth = np.array([len(self.ancestors(b)) for b in range(len(self.names))], np.int64)
        return tuple(np.flatnonzero(depth == d) for d in range(depth.max() + 1))

    def ancestors(self, bone: int) -> list[int]:
        """The bones above bone, nearest first."""
        out, p = [], int(self.parents[bone])
        while p >= 0:
            out.append(p)
            p = int(self.parents[p])
        return out


@dataclass(frozen=True)
class Body:
    """The parts found in one rig: part name (hips, neck, head, thigh.L, ...) -> bone, and the spine chain."""

    preset: str
    parts: dict[str, int]
    spine: tuple[int, ...]  # the bones from above the hips up to the chest (the last), in-between ones included


@dataclass(frozen=True)
class BoneMatch:
    """A bone map (model joint -> rig bone, "" for none), the preset used and what was left unmatched."""

    preset: str
    bone_map: dict[str, str]
    unmatched_bones: tuple[str, ...]  # rig bones no joint drives (in-between bones, fingers, twist bones, ...)
    unmatched_joints: tuple[str, ...]  # model joints that drive no bone


def preset_names(preset: str) -> dict[str, str]:
    """A preset's part -> bone name table, sides spelt out (thigh.L, ...) and the spine numbered (spine.0, ...)."""
    table = PRESETS[preset]
    out = {part: str(table[part]) for part in CENTRE_PARTS}
    out.update({f"spine.{i}": name for i, name in enumerate(table["spine"])})
    for part in LIMB_PARTS:
        for side, (word, low, up) in SIDES.items():
            out[f"{part}.{side}"] = str(table[part]).format(Side=word, s=low, S=up)
    return out


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.lower())


def _pick_preset(rig: RigBones) -> tuple[str, dict[str, int]]:
    """The preset naming most of the rig's bones (exact names first, then ignoring case and separators), and the
    bones it names; "hierarchy" and none when no preset names any."""
    exact = {n: i for i, n in enumerate(rig.names)}
    loose: dict[str, int] = {}
    for i, n in enumerate(rig.names):
        loose.setdefault(_norm(n), i)
    best: tuple[tuple[int, int], str, dict[str, int]] | None = None
    for preset in PRESETS:
        named = {part: exact[n] for part, n in preset_names(preset).items() if n in exact}
        score = (len(named), 0)
        if not named:
            named = {part: loose[_norm(n)] for part, n in preset_names(preset).items() if _norm(n) in loose}
            score = (0, len(named))
        if best is None or score > best[0]:
            best = (score, preset, named)
    assert best is not None
    return (best[1], best[2]) if best[0] != (0, 0) else ("hierarchy", {})


def _chain(rig: RigBones, start: int) -> list[int]:
    """start and the bones below it, following at each bone the child with the largest subtree."""
    out = [start]
    while rig.children[out[-1]]:
        out.append(max(rig.children[out[-1]], key=lambda c: (len(rig.subtree[c]), -c)))
    return out


def _spans(rig: RigBones, chain: list[int]) -> np.ndarray:
    """The distance from each chain bone's head to the next's (0 for the last)."""
    heads = rig.heads[chain]
    return np.append(np.linalg.norm(np.diff(heads, axis=0), axis=1), 0.0)


def _longest_pair(spans: np.ndarray) -> int:
    """Index of the first of two consecutive chain bones spanning furthest together."""
    return int(np.argmax(spans[:-1] + spans[1:])) if len(spans) > 1 else 0


def _upper_arm(rig: RigBones, chain: list[int], hip_width: float) -> int:
    """Index of the upper arm in an arm chain: the first bone whose head is further out from the spine's centre line
    than UPPER_ARM_OUT times the hip joints' spacing (a collarbone starts inside that, a shoulder joint outside)."""
    out = np.abs(rig.heads[chain, 0] - rig.heads[rig.parents[chain[0]], 0])
    beyond = np.flatnonzero(out >= UPPER_ARM_OUT * hip_width)
    return int(beyond[0]) if len(beyond) else 0


def _limb(rig: RigBones, chain: list[int], parts: tuple[str, ...], named: dict[str, int], side: str,
          hip_width: float = 0.0) -> dict[str, int]:
    """Parts of one limb chain: named bones where they sit in order, the rest from the chain's shape.

    parts are (root part or "", upper, lower, end, tip or "") in chain order. An arm (root part given) finds its
    upper arm as the first bone out from the spine, and its collarbone is the chain's first bone when that is not
    the upper arm; a leg finds thigh and shin as the two consecutive bones spanning furthest.
    """
    root, upper, lower, end, tip = parts
    where = {b: i for i, b in enumerate(chain)}
    pos = {p: where.get(named.get(f"{p}.{side}", -1), -1) for p in parts if p}
    spans = _spans(rig, chain)
    u = pos[upper]
    if u < 0 or (root and u == 0 and pos[root] < 0 and _upper_arm(rig, chain, hip_width) > 0):
        u = _upper_arm(rig, chain, hip_width) if root else _longest_pair(spans)
    lo = pos[lower] if pos[lower] > u else u + 1
    e = pos[end] if pos[end] > lo else lo + 1
    out = {f"{upper}.{side}": chain[u]}
    if lo < len(chain):
        out[f"{lower}.{side}"] = chain[lo]
    if e < len(chain):
        out[f"{end}.{side}"] = chain[e]
    if tip:
        t = pos[tip] if pos[tip] > e else e + 1
        if t < len(chain) and spans[e] > 0.0:
            out[f"{tip}.{side}"] = chain[t]
    if root and u > 0:
        out[f"{root}.{side}"] = chain[0]  # the first bone off the spine towards the arm, whatever its name
    return out


def _hips(rig: RigBones, named: dict[str, int]) -> int:
    """The hips: the named bone when two legs hang below it, else the first bone with two legs and a spine."""
    def legs_and_spine(b: int) -> bool:
        low = [c for c in rig.children[b] if rig.heads[list(rig.subtree[c]), 1].min() < rig.heads[b, 1]
               - 0.25 * np.ptp(rig.heads[:, 1])]
        return len(low) >= 2 and len(rig.children[b]) >= 3
    if "hips" in named and legs_and_spine(named["hips"]):
        return named["hips"]
    for b in rig._post_order()[::-1]:  # roots first
        if legs_and_spine(b):
            return b
    raise RigMatchError(f"no hips found: no bone has two legs and a spine below it (bones: "
                        f"{', '.join(rig.names[:8])}{', ...' if len(rig.names) > 8 else ''})")


def find_body(rig: RigBones) -> Body:
    """The body parts of a rig (see the module docstring)."""
    preset, named = _pick_preset(rig)
    hips = _hips(rig, named)
    parts: dict[str, int] = {"hips": hips}
    height = np.ptp(rig.heads[:, 1])
    below = lambda c: rig.heads[list(rig.subtree[c]), 1].min()  # noqa: E731
    legs = sorted(rig.children[hips], key=below)[:2]
    for leg in legs:
        side = "L" if rig.heads[list(rig.subtree[leg]), 0].mean() > rig.heads[hips, 0] else "R"
        parts.update(_limb(rig, _chain(rig, leg), ("", "thigh", "shin", "foot", "toe"), named, side))
    up = [c for c in rig.children[hips] if c not in legs]
    if not up:
        raise RigMatchError(f"no spine found above the hips bone {rig.names[hips]}")
    spine: list[int] = []
    bone = max(up, key=lambda c: (rig.heads[list(rig.subtree[c]), 1].max(), len(rig.subtree[c])))
    arms: list[int] = []
    while True:
        spine.append(bone)
        reach = ARM_FROM_SPINE * max(np.linalg.norm(rig.heads[bone] - rig.heads[hips]), 0.05 * height)
        sideways = [c for c in rig.children[bone]
                    if np.abs(rig.heads[list(rig.subtree[c]), 0] - rig.heads[bone, 0]).max() > reach]
        lefts = [c for c in sideways if rig.heads[list(rig.subtree[c]), 0].mean() > rig.heads[bone, 0]]
        rights = [c for c in sideways if c not in lefts]
        if lefts and rights:
            arms = [max(lefts, key=lambda c: len(rig.subtree[c])), max(rights, key=lambda c: len(rig.subtree[c]))]
            break
        if not rig.children[bone]:
            break
        bone = max(rig.children[bone], key=lambda c: (len(rig.subtree[c]), -c))
    hip_width = abs(rig.heads[parts.get("thigh.L", hips), 0] - rig.heads[parts.get("thigh.R", hips), 0])
    for arm, side in zip(arms, "LR"):
        parts.update(_limb(rig, _chain(rig, arm), ("shoulder", "upper_arm", "forearm", "hand", ""), named, side,
                           hip_width))
    rest = [c for c in rig.children[spine[-1]] if c not in arms]
    if arms and rest:
        neck_chain = _chain(rig, max(rest, key=lambda c: rig.heads[list(rig.subtree[c]), 1].max()))
        where = {b: i for i, b in enumerate(neck_chain)}
        # Without a name, the neck is the chain's first bone away from the chest (not an in-between at its head).
        away = np.linalg.norm(rig.heads[neck_chain] - rig.heads[spine[-1]], axis=1) > 1e-3 * height
        n = where.get(named.get("neck", -1), int(np.argmax(away)) if away.any() else 0)
        parts["neck"] = neck_chain[n]
        h = where.get(named.get("head", -1), -1)
        h = h if h > n else n + 1
        if h < len(neck_chain):
            parts["head"] = neck_chain[h]
    return Body(preset, parts, tuple(spine))


def _spine_pairs(model: Body, rig: Body) -> list[tuple[int, int]]:
    """Model spine joints paired with rig spine bones: chests together, the others spread evenly along the chain."""
    ms, rs = list(model.spine), list(rig.spine)
    pairs = [(ms[-1], rs[-1])]
    used = {rs[-1]}
    for k, joint in enumerate(ms[:-1]):
        if len(rs) < 2:
            break
        bone = rs[int(round(k * (len(rs) - 1) / max(len(ms) - 1, 1)))]
        if bone not in used:
            pairs.append((joint, bone))
            used.add(bone)
    return pairs


# Side markers as rigs spell them: a Left/Right word anywhere, or a lone L/R set off by a separator at either end
# (upper_arm.L, l_hand), or glued to a capital (LHand). Tried in order; the first that matches wins.
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


def _body_pairs(skeleton: Skeleton, rig: RigBones) -> tuple[str, list[tuple[int, int]]]:
    """The preset used and (joint, bone) pairs of the parts found in both ("names" and none when a body is not)."""
    try:
        model, body = find_body(RigBones.from_skeleton(skeleton)), find_body(rig)
    except RigMatchError:
        return "names", []
    pairs = [(model.parts[p], body.parts[p]) for p in model.parts if p in body.parts]
    if model.spine and body.spine:
        pairs += _spine_pairs(model, body)
    return body.preset, pairs


def match(skeleton: Skeleton, rig: RigBones) -> BoneMatch:
    """The bone map from a model skeleton to a rig: body parts found in both paired, then the joints left over
    matched by name (exactly, else by name_key) to bones no part took."""
    preset, pairs = _body_pairs(skeleton, rig)
    bone_map = {name: "" for name in skeleton.names}
    for joint, bone in pairs:
        bone_map[skeleton.names[joint]] = rig.names[bone]
    used = set(bone_map.values())
    free = [n for n in rig.names if n not in used]
    by_key: dict[str, str] = {}
    for bone in free:
        by_key.setdefault(name_key(bone), bone)
    for joint in [j for j, b in bone_map.items() if not b]:
        bone = joint if joint in free else by_key.get(name_key(joint), "")
        if bone and bone not in used:
            bone_map[joint] = bone
            used.add(bone)
    return BoneMatch(preset, bone_map, tuple(n for n in rig.names if n not in used),
                     tuple(j for j, b in bone_map.items() if not b))


@dataclass(frozen=True)
class Transfer:
    """How model poses reach a rig: the driven pairs, each pair's rest alignment and the root motion's scale.

    align[m] is the rotation S taking the model's rest directions at joints[m] onto the rig's at bones[m] (model
    axes), so a rig bone whose rest world rotation is G0 shows a model joint's world rotation W as W S^T G0: at
    the model's rest pose the rig's bones point where the model's do, and from there they turn as the model's.
    Bones between two driven ones are not driven: they keep their rest relative to their parent, so their rest
    orientation is part of where the driven bone below them sits, never of how it turns.
    """

    joints: np.ndarray  # (M,) driven model joints, ascending (the root first)
    bones: np.ndarray  # (M,) the rig bone each drives
    align: np.ndarray  # (M, 3, 3)
    root_scale: float  # rig units per model metre of root motion: the ratio of the rigs' hip heights
    legs: np.ndarray  # (L, 5) per leg: the rig's thigh, shin, foot and held (toe) bones, and the model's held joint


def _mapped_below(skeleton: Skeleton, joint: int, bone_of: dict[int, int]) -> list[int]:
    """The nearest driven joints under joint (its children, or theirs where a child drives nothing)."""
    out: list[int] = []
    for child in skeleton.children[joint]:
        out.extend([child] if child in bone_of else _mapped_below(skeleton, child, bone_of))
    return out


def _swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotations (..., 3, 3) taking unit vectors a (..., 3) onto unit vectors b (..., 3)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    v, c = np.cross(a, b), np.sum(a * b, axis=-1)
    k = np.zeros(v.shape + (3,))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    k -= np.swapaxes(k, -1, -2)
    out = np.eye(3) + k + k @ k / np.maximum(1.0 + c, 1e-12)[..., None, None]
    opposite = c < -1.0 + 1e-9
    if np.any(opposite):  # half a turn about any axis square to a
        side = np.where(np.abs(a[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
        axis = np.cross(a, side)
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        half = 2.0 * axis[..., :, None] * axis[..., None, :] - np.eye(3)
        out = np.where(opposite[..., None, None], half, out)
    return out


class _Rest:
    """Rest vectors between driven joints, in the model and in the rig, for the alignment's directions."""

    def __init__(self, skeleton: Skeleton, rig: RigBones, bone_of: dict[int, int]) -> None:
        self.skeleton, self.bone_of = skeleton, bone_of
        self.model = skeleton.rest_positions()
        self.rig = rig.heads
        self.scale = np.ptp(self.rig[list(bone_of.values())], axis=0).max() / max(np.ptp(self.model, axis=0).max(),
                                                                                   1e-9)

    def vectors(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Model and rig vectors from joint a to joint b, None where either is too short to give a direction."""
        vm, vr = self.model[b] - self.model[a], self.rig[self.bone_of[b]] - self.rig[self.bone_of[a]]
        if np.linalg.norm(vm) < MIN_SPAN_M or np.linalg.norm(vr) < MIN_SPAN_M * self.scale:
            return None
        return vm, vr

    def aim(self, joint: int, kids: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """The primary direction: to the centre-line (else largest) driven joint below, past coinciding ones."""
        sk = self.skeleton
        sizes = {c: len(_descendants(sk, c)) for c in kids}
        for c in sorted(kids, key=lambda c: (sk.mirror_map[c] != c, -sizes[c], c)):
            found = self.vectors(joint, c)
            if found is None:
                found = self.aim(joint, _mapped_below(sk, c, self.bone_of))
            if found is not None:
                return found
        return None

    def span(self, kids: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """The secondary direction: left minus right of a mirrored pair below, past pairs that coincide."""
        sk = self.skeleton
        for c in kids:
            twin = int(sk.mirror_map[c])
            if twin == c or twin not in kids or not sk.left_mask[c]:
                continue
            found = self.vectors(twin, c)
            if found is not None:
                return found
            lower = _mapped_below(sk, c, self.bone_of) + _mapped_below(sk, twin, self.bone_of)
            return self.span(lower) if lower else None
        return None


def _descendants(skeleton: Skeleton, joint: int) -> list[int]:
    out = [joint]
    for c in skeleton.children[joint]:
        out.extend(_descendants(skeleton, c))
    return out


def _legs(skeleton: Skeleton, bone_of: dict[int, int]) -> np.ndarray:
    """Per leg whose thigh, shin and foot are driven: the rig's thigh, shin, foot and held bones, the model's held
    joint (the toe when it is driven, else the foot)."""
    parts = find_body(RigBones.from_skeleton(skeleton)).parts
    rows = []
    for side in "LR":
        chain = [parts.get(f"{p}.{side}", -1) for p in ("thigh", "shin", "foot", "toe")]
        if all(j in bone_of for j in chain[:3]):
            held = chain[3] if chain[3] in bone_of else chain[2]
            rows.append([bone_of[j] for j in chain[:3]] + [bone_of[held], held])
    return np.array(rows, np.int64).reshape(-1, 5)


def transfer(skeleton: Skeleton, rig: RigBones, bone_map: dict[str, str]) -> Transfer:
    """The rest alignment of each driven pair of bone_map (joint -> bone name, "" for none) and the root's scale."""
    index = {name: i for i, name in enumerate(rig.names)}
    bone_of = {j: index[bone_map[n]] for j, n in enumerate(skeleton.names) if bone_map.get(n) in index}
    if 0 not in bone_of:
        raise RigMatchError(f"the model's root joint {skeleton.names[0]} drives no bone")
    rest = _Rest(skeleton, rig, bone_of)
    align: dict[int, np.ndarray] = {}
    for joint in sorted(bone_of):  # parents come first, so an ancestor's alignment is always ready
        kids = _mapped_below(skeleton, joint, bone_of)
        primary = rest.aim(joint, kids) if kids else None
        if primary is None:  # a leaf (hand, head, toe) has no direction of its own: it turns with its parent
            up = int(skeleton.parents[joint])
            while up >= 0 and up not in align:
                up = int(skeleton.parents[up])
            align[joint] = align[up] if up >= 0 else np.eye(3)
            continue
        second = rest.span(kids)
        pm, pr = (v / np.linalg.norm(v) for v in primary)
        if second is None or np.linalg.norm(np.cross(pm, second[0])) < 1e-6 \
                or np.linalg.norm(np.cross(pr, second[1])) < 1e-6:
            align[joint] = _swing(pm, pr)
        else:
            align[joint] = orthonormal_frames(pr, second[1]) @ orthonormal_frames(pm, second[0]).T
    joints = np.array(sorted(bone_of), np.int64)
    bones = np.array([bone_of[j] for j in joints], np.int64)
    plan = Transfer(joints, bones, np.stack([align[j] for j in joints]), 1.0, _legs(skeleton, bone_of))
    # Hip heights compared in the model's rest pose, which the rig takes through the alignment (a rig whose rest
    # legs splay or bend stands taller once they hang straight).
    eye = np.broadcast_to(np.eye(3), (1, skeleton.n_joints, 3, 3))
    rig_y = rig_world(skeleton, rig, plan, eye, rig.heads[bones[:1]], follow_feet=False)[0][0, bones, 1]
    model_y = rest.model[joints, 1]
    model_height, rig_height = model_y[0] - model_y.min(), rig_y[0] - rig_y.min()
    scale = rig_height / model_height if model_height > 1e-9 and rig_height > 1e-9 else rest.scale
    return Transfer(joints, bones, plan.align, float(scale), plan.legs)


def _heads(rig: RigBones, turn: np.ndarray, root: int, root_head: np.ndarray) -> np.ndarray:
    """Rig bone heads (T, B, 3) from each bone's turn away from rest (T, B, 3, 3), the root bone at root_head."""
    heads = np.broadcast_to(rig.heads, turn.shape[:2] + (3,)).copy()
    for level in rig.levels:
        child = level[rig.parents[level] >= 0]
        parents = rig.parents[child]
        heads[:, child] = heads[:, parents] + np.einsum("tbij,bj->tbi", turn[:, parents],
                                                       rig.heads[child] - rig.heads[parents])
        if root in level:
            heads[:, root] = root_head
    return heads


def _bend_normal(hip: np.ndarray, knee: np.ndarray, end: np.ndarray, forward: np.ndarray) -> tuple[np.ndarray, ...]:
    """The hip-end line's direction, the knee's direction square to it (forward where the leg is straight) and the
    bend plane's normal, each (..., 3)."""
    axis = _unit(end - hip)

    def square(v: np.ndarray) -> np.ndarray:
        return v - np.sum(v * axis, axis=-1, keepdims=True) * axis
    bend = square(knee - hip)
    straight = np.linalg.norm(bend, axis=-1, keepdims=True) < 1e-6 * np.linalg.norm(knee - hip, axis=-1,
                                                                                     keepdims=True)
    bend = _unit(np.where(straight, square(forward), bend))
    return axis, bend, np.cross(axis, bend)


def _leg_turns(rig: RigBones, plan: Transfer, heads: np.ndarray, targets: np.ndarray,
               forward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The world turns (T, L, 3, 3) of each leg's thigh and of its shin (two-bone IK, in the plane of its own knee)
    that bring its held bone to its target (T, L, 3), the foot keeping its own turn. forward (T, L, 3): the knee's
    bend direction, used where the leg is straight."""
    thigh, shin, foot, pin = (plan.legs[:, i] for i in range(4))
    hip, knee, ankle = heads[:, thigh], heads[:, shin], heads[:, foot]
    want = targets - (heads[:, pin] - ankle)
    l1 = np.linalg.norm(rig.heads[shin] - rig.heads[thigh], axis=-1)
    l2 = np.linalg.norm(rig.heads[foot] - rig.heads[shin], axis=-1)
    length = np.clip(np.linalg.norm(want - hip, axis=-1), np.abs(l1 - l2) + 1e-9, l1 + l2)
    axis, bend, normal = _bend_normal(hip, knee, want, forward)
    want = hip + axis * length[..., None]
    along = (length ** 2 + l1 ** 2 - l2 ** 2) / (2.0 * length)
    new_knee = hip + along[..., None] * axis + np.sqrt(np.maximum(l1 ** 2 - along ** 2, 0.0))[..., None] * bend
    was_normal = _bend_normal(hip, knee, ankle, forward)[2]
    # The thigh turns onto its new direction and the bend plane onto the new one; the shin then swings in that plane.
    first = orthonormal_frames(new_knee - hip, normal) @ np.swapaxes(orthonormal_frames(knee - hip, was_normal),
                                                                     -1, -2)
    second = _swing(_unit(np.einsum("tlij,tlj->tli", first, ankle - knee)), _unit(want - new_knee)) @ first
    return first, second


def _apply_leg_turns(rig: RigBones, plan: Transfer, turn: np.ndarray, first: np.ndarray, second: np.ndarray) -> None:
    """Turn each leg's bones from the thigh down to the foot (in-between ones too) by _leg_turns', in place."""
    thigh, shin, foot = (plan.legs[:, i] for i in range(3))
    for leg in range(len(plan.legs)):
        below_foot = set(rig.subtree[foot[leg]])
        upper = [b for b in rig.subtree[thigh[leg]] if b not in below_foot and b not in rig.subtree[shin[leg]]]
        lower = [b for b in rig.subtree[shin[leg]] if b not in below_foot]
        turn[:, upper] = first[:, leg, None] @ turn[:, upper]
        turn[:, lower] = second[:, leg, None] @ turn[:, lower]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _raw_pose(skeleton: Skeleton, rig: RigBones, plan: Transfer, rotations: np.ndarray, root_positions: np.ndarray):
    """The model's joint positions and world rotations, and the rig's turns and heads before the feet follow."""
    positions, world = skeleton.forward_kinematics_matrices(rotations, root_positions)
    n = len(rig.names)
    turn = np.broadcast_to(np.eye(3), (len(world), n, 3, 3)).copy()
    driven = np.full(n, -1)
    driven[plan.bones] = np.arange(len(plan.bones))
    for level in rig.levels:
        # Undriven bones turn with their parent (and keep their rest offset from it); driven ones show W S^T.
        child = level[rig.parents[level] >= 0]
        turn[:, child] = turn[:, rig.parents[child]]
        mine = driven[level] >= 0
        m = driven[level][mine]
        turn[:, level[mine]] = world[:, plan.joints[m]] @ np.swapaxes(plan.align[m], -1, -2)
    return positions, world, turn, _heads(rig, turn, plan.bones[0], plan.root_scale * root_positions)


def _leg_joints(plan: Transfer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model joints driving each leg's thigh, shin and foot."""
    joint_of = dict(zip(plan.bones.tolist(), plan.joints.tolist()))
    return tuple(np.array([joint_of[b] for b in plan.legs[:, i]], np.int64) for i in range(3))


def rig_world(skeleton: Skeleton, rig: RigBones, plan: Transfer, local_rotations: np.ndarray,
              root_positions: np.ndarray, follow_feet: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Model poses (local rotation matrices (T, J, 3, 3), root positions (T, 3)) -> every rig bone's head (T, B, 3)
    and its rotation away from rest in the world (T, B, 3, 3), model axes, the root motion scaled.

    follow_feet turns each leg's thigh and shin so its toe lands where the model's toe lands, scaled like the root
    motion: a rig whose legs are built otherwise keeps the model's ground contact and stride (a no-op on a rig of
    the model's proportions).
    """
    root_positions = np.asarray(root_positions, np.float64)
    positions, world, turn, heads = _raw_pose(skeleton, rig, plan, np.asarray(local_rotations, np.float64),
                                              root_positions)
    if follow_feet and len(plan.legs):
        first, second = _leg_turns(rig, plan, heads, plan.root_scale * positions[:, plan.legs[:, 4]],
                                   world[:, _leg_joints(plan)[1]][..., 2])
        _apply_leg_turns(rig, plan, turn, first, second)
        heads = _heads(rig, turn, plan.bones[0], plan.root_scale * root_positions)
    return heads, turn


def follow_feet_rotations(skeleton: Skeleton, rig: RigBones, plan: Transfer, local_rotations: np.ndarray,
                          root_positions: np.ndarray) -> np.ndarray:
    """Model local rotation matrices (T, J, 3, 3) with each leg's hip, knee and ankle joints turned as rig_world's
    follow_feet turns the rig's: shown on the rig through the plan, they put its toes where the model's land
    (for a client that applies the plan itself, such as the Godot addon)."""
    rotations = np.asarray(local_rotations, np.float64)
    positions, world, _, heads = _raw_pose(skeleton, rig, plan, rotations, np.asarray(root_positions, np.float64))
    if not len(plan.legs):
        return rotations.copy()
    thighs, shins, feet = _leg_joints(plan)
    first, second = _leg_turns(rig, plan, heads, plan.root_scale * positions[:, plan.legs[:, 4]],
                               world[:, shins][..., 2])
    out = rotations.copy()
    new_world = world.copy()
    new_world[:, thighs] = first @ world[:, thighs]
    new_world[:, shins] = second @ world[:, shins]
    out[:, thighs] = np.swapaxes(world[:, skeleton.parents[thighs]], -1, -2) @ new_world[:, thighs]
    out[:, shins] = np.swapaxes(new_world[:, skeleton.parents[shins]], -1, -2) @ new_world[:, shins]
    out[:, feet] = np.swapaxes(new_world[:, skeleton.parents[feet]], -1, -2) @ world[:, feet]
    return out
