"""A client's rig bound to the model (the `bind` message): runtime.rigmap matches it, and the client's frames then
carry leg rotations that keep the rig's feet on the model's footprints."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import rigmap
from runtime.rotations import matrix_to_quat, quat_to_matrix
from runtime.skeleton import Skeleton

from . import protocol as P


@dataclass(frozen=True)
class RigBinding:
    """A bound rig: its bones (in the model's axes: Godot's) and the transfer plan."""

    rig: rigmap.RigBones
    plan: rigmap.Transfer
    found: rigmap.BoneMatch
    bone_map: dict[str, str]

    def reply(self, skeleton: Skeleton, seq: int | None) -> str:
        """The `ok` reply: per model joint its bone (index into the message's bones, -1 for none) and alignment."""
        index = {name: i for i, name in enumerate(self.rig.names)}
        align = np.tile([0.0, 0.0, 0.0, 1.0], (skeleton.n_joints, 1))
        align[self.plan.joints] = matrix_to_quat(self.plan.align)
        return P.encode_ok("bind", seq, preset=self.found.preset,
                           bones=[index.get(self.bone_map.get(n, ""), -1) for n in skeleton.names],
                           align=np.round(align, 9).tolist(), root_scale=round(self.plan.root_scale, 9),
                           unmatched_bones=[n for n in self.rig.names if n not in set(self.bone_map.values())],
                           unmatched_joints=[n for n in skeleton.names if not self.bone_map.get(n)])

    def legs(self, skeleton: Skeleton, records: np.ndarray) -> np.ndarray:
        """Character records with the legs' local rotations turned for this rig (rigmap.follow_feet_rotations)."""
        if not len(records) or not len(self.plan.legs):
            return records
        out = records.copy()
        q = out["local_rotations"].astype(np.float64)
        moved = matrix_to_quat(rigmap.follow_feet_rotations(skeleton, self.rig, self.plan, quat_to_matrix(q),
                                                            out["root_position"].astype(np.float64)))
        moved *= np.where(np.sum(moved * q, axis=-1, keepdims=True) < 0.0, -1.0, 1.0)  # the streamed hemisphere
        out["local_rotations"] = moved
        return out


def bind(skeleton: Skeleton, msg: P.ClientMessage) -> RigBinding:
    """A bind message's rig matched to the skeleton (the message's map entries override); bad_message when it
    names unknown joints or bones, or the rig has no body to match."""
    f = msg.fields
    rig = rigmap.RigBones(f["bones"], f["parents"], f["heads"])
    given = f.get("map", {})
    unknown = [j for j in given if j not in skeleton.names] + [b for b in given.values() if b and b not in rig.names]
    if unknown:
        raise P.ProtocolError("bad_message", f"bind.map names {unknown[0][:40]!r}, which is not a model joint or "
                                             "a bone of the message", msg.seq)
    found = rigmap.match(skeleton, rig)
    bone_map = {**found.bone_map, **given}
    if len(set(b for b in bone_map.values() if b)) != sum(1 for b in bone_map.values() if b):
        raise P.ProtocolError("bad_message", "bind.map drives a bone from two joints", msg.seq)
    try:
        plan = rigmap.transfer(skeleton, rig, bone_map)
    except rigmap.RigMatchError as e:
        raise P.ProtocolError("bad_message", f"bind: {e}", msg.seq) from None
    return RigBinding(rig, plan, found, bone_map)
