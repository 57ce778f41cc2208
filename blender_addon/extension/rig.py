"""Armatures in the scene: build one from a model's skeleton, read a rig's rest pose, show a pose live."""
from __future__ import annotations

import bpy
import numpy as np

from .convert import positions_to_blender
from .retarget import Binding, RigPose, RigRest
from .runtime.gltf import bone_mesh
from .runtime.skeleton import Skeleton

MIN_BONE_M = 0.02  # Blender drops zero-length bones; tips without an End Site get at least this


def _tails(skeleton: Skeleton, heads: np.ndarray) -> np.ndarray:
    """A tail per joint: the child that continues its direction, its End Site, or a stub along its offset."""
    offsets = positions_to_blender(skeleton.offsets)
    ends = positions_to_blender(skeleton.end_offsets)
    tails = np.empty_like(heads)
    for j in range(skeleton.n_joints):
        along = offsets[j] if j and np.linalg.norm(offsets[j]) > 1e-9 else np.array([0.0, 0.0, 1.0])
        along = along / np.linalg.norm(along)
        kids = [c for c in skeleton.children[j] if np.linalg.norm(offsets[c]) > MIN_BONE_M]
        if kids:
            tails[j] = heads[max(kids, key=lambda c: offsets[c] @ along / np.linalg.norm(offsets[c]))]
        elif not np.isnan(ends[j, 0]) and np.linalg.norm(ends[j]) > MIN_BONE_M:
            tails[j] = heads[j] + ends[j]
        else:
            tails[j] = heads[j] + along * max(0.5 * np.linalg.norm(offsets[j]), MIN_BONE_M)
    return tails


def _add_bone_mesh(collection: bpy.types.Collection, armature: bpy.types.Object, skeleton: Skeleton,
                   world_rest: np.ndarray) -> bpy.types.Object:
    """A thin box per bone, each skinned fully to its bone, so renders and exports show a body."""
    positions, joints, _, indices = bone_mesh(skeleton, world_rest)
    mesh = bpy.data.meshes.new(f"{armature.name}_body")
    mesh.from_pydata(positions_to_blender(positions).tolist(), [], indices.reshape(-1, 3).tolist())
    mesh.update()
    body = bpy.data.objects.new(mesh.name, mesh)
    collection.objects.link(body)
    body.parent = armature
    owner = joints[:, 0]
    for j in np.unique(owner):
        body.vertex_groups.new(name=skeleton.names[j]).add(np.flatnonzero(owner == j).tolist(), 1.0, "REPLACE")
    body.modifiers.new("Armature", "ARMATURE").object = armature
    return body


def create_armature(context: bpy.types.Context, skeleton: Skeleton, name: str) -> bpy.types.Object:
    """A new armature (and body mesh) in the active collection, bones named and placed as the model's joints."""
    if context.object is not None and context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    # The root's own offset is its rest height, which puts the rest pose on the ground.
    world_rest = skeleton.rest_positions() + skeleton.offsets[0]
    heads = positions_to_blender(world_rest)
    tails = _tails(skeleton, heads)
    armature = bpy.data.armatures.new(name)
    armature.display_type = "STICK"
    obj = bpy.data.objects.new(name, armature)
    obj.show_in_front = True
    context.collection.objects.link(obj)
    for other in context.view_layer.objects:
        other.select_set(False)
    context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    bones = []
    for j, joint in enumerate(skeleton.names):
        bone = armature.edit_bones.new(joint)
        bone.head, bone.tail = heads[j].tolist(), tails[j].tolist()
        bone.use_connect = False  # heads stay exactly on the joints, whatever the parent's tail does
        if j:
            bone.parent = bones[skeleton.parents[j]]
        bones.append(bone)
    bpy.ops.object.mode_set(mode="OBJECT")
    _add_bone_mesh(context.collection, obj, skeleton, world_rest)
    return obj


def read_rest(obj: bpy.types.Object) -> RigRest:
    """An armature object's bones (parents first), rest matrices and current pose bases."""
    bones = list(obj.data.bones)
    depth = {b.name: len(b.parent_recursive) for b in bones}
    bones.sort(key=lambda b: depth[b.name])
    names = tuple(b.name for b in bones)
    index = {name: i for i, name in enumerate(names)}
    parents = np.array([index[b.parent.name] if b.parent else -1 for b in bones], dtype=np.int64)
    rest = np.array([np.array(b.matrix_local) for b in bones], dtype=np.float64)
    basis = np.array([np.array(obj.pose.bones[n].matrix_basis) for n in names], dtype=np.float64)
    return RigRest(names, parents, rest, basis)


def use_quaternions(obj: bpy.types.Object, bones: list[str]) -> None:
    """Switch the given pose bones to quaternion rotation, the channel the extension writes."""
    for name in bones:
        obj.pose.bones[name].rotation_mode = "QUATERNION"


class PoseWriter:
    """Writes one frame of a RigPose to an armature's pose bones with foreach_set (the live path)."""

    def __init__(self, obj: bpy.types.Object, binding: Binding) -> None:
        order = {pb.name: i for i, pb in enumerate(obj.pose.bones)}
        self.slots = np.array([order[name] for name in binding.bone_names], dtype=np.int64)
        self.root_bone = binding.root_bone
        self.buffer = np.empty(4 * len(order), np.float32)

    def show(self, obj: bpy.types.Object, rig_pose: RigPose, frame: int = 0) -> None:
        """Set frame of rig_pose on obj; bones the map leaves out keep their values."""
        bones = obj.pose.bones
        bones.foreach_get("rotation_quaternion", self.buffer)
        self.buffer.reshape(-1, 4)[self.slots] = rig_pose.quaternions[frame]
        bones.foreach_set("rotation_quaternion", self.buffer)
        bones[self.root_bone].location = rig_pose.root_location[frame].tolist()
        obj.update_tag()  # foreach_set does not tag the depsgraph itself
