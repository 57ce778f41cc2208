"""Write a skeleton animation as binary glTF (.glb): joint nodes, a skin, a bone mesh and one animation.

Y up, metres, quaternions (x, y, z, w): glTF's own conventions, so the data goes in unchanged. The small
mesh (one thin box per bone, skinned rigidly) gives importers such as Blender's and Godot's a skinned
character, so they build an armature / Skeleton3D rather than loose empties.
"""
from __future__ import annotations

import os

import numpy as np

from .atomic import atomic_path
from .skeleton import Skeleton

BONE_WIDTH_M = 0.03


def bone_mesh(skel: Skeleton, world_rest: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Positions (V, 3), joints (V, 4) u16, weights (V, 4) and triangle indices (I,) u16: a box per bone."""
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (0, 1)], dtype=np.float64)
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    pos, joints, idx = [], [], []
    for j in range(1, skel.n_joints):
        p = skel.parents[j]
        a, b = world_rest[p], world_rest[j]
        axis = b - a
        length = np.linalg.norm(axis)
        if length < 1e-6:
            continue
        d = axis / length
        side = np.cross(d, [0.0, 0.0, 1.0] if abs(d[2]) < 0.9 else [1.0, 0.0, 0.0])
        side /= np.linalg.norm(side)
        up = np.cross(d, side)
        w = BONE_WIDTH_M / 2
        verts = a + corners[:, 0:1] * w * side + corners[:, 1:2] * w * up + corners[:, 2:3] * axis
        idx.append(faces + 8 * len(pos))
        pos.append(verts)
        joints.append(np.full(8, p))
    positions = np.concatenate(pos).astype(np.float32)
    j4 = np.zeros((len(positions), 4), np.uint16)
    j4[:, 0] = np.concatenate(joints)
    w4 = np.zeros((len(positions), 4), np.float32)
    w4[:, 0] = 1.0
    return positions, j4, w4, np.concatenate(idx).astype(np.uint16).ravel()


def write_glb(path: str | os.PathLike, skel: Skeleton, fps: float, root_positions: np.ndarray,
              rotations: np.ndarray, name: str = "character") -> None:
    """Write a .glb: root positions (T, 3) and local rotations (T, J, 4) of skel at fps, atomically."""
    import pygltflib as g

    t = len(root_positions)
    world_rest = skel.rest_positions()
    blob = bytearray()
    views, accessors = [], []

    def add(array: np.ndarray, kind: str, target: int | None = None, minmax: bool = False) -> int:
        comp = {np.float32: g.FLOAT, np.uint16: g.UNSIGNED_SHORT}[array.dtype.type]
        while len(blob) % 4:
            blob.append(0)
        views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=array.nbytes, target=target))
        blob.extend(array.tobytes())
        acc = g.Accessor(bufferView=len(views) - 1, componentType=comp, count=len(array), type=kind)
        if minmax:
            flat = array.reshape(len(array), -1)
            acc.min, acc.max = flat.min(0).tolist(), flat.max(0).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    times = add((np.arange(t) / fps).astype(np.float32), g.SCALAR, minmax=True)
    samplers, channels = [], []
    translations = add(np.ascontiguousarray(root_positions, np.float32), g.VEC3)
    samplers.append(g.AnimationSampler(input=times, output=translations, interpolation=g.ANIM_LINEAR))
    channels.append(g.AnimationChannel(sampler=0, target=g.AnimationChannelTarget(node=0, path="translation")))
    for j in range(skel.n_joints):
        q = add(np.ascontiguousarray(rotations[:, j], np.float32), g.VEC4)
        samplers.append(g.AnimationSampler(input=times, output=q, interpolation=g.ANIM_LINEAR))
        channels.append(g.AnimationChannel(sampler=len(samplers) - 1,
                                           target=g.AnimationChannelTarget(node=j, path="rotation")))

    positions, joints, weights, indices = bone_mesh(skel, world_rest)
    prim = g.Primitive(attributes=g.Attributes(POSITION=add(positions, g.VEC3, g.ARRAY_BUFFER, minmax=True),
                                               JOINTS_0=add(joints, g.VEC4, g.ARRAY_BUFFER),
                                               WEIGHTS_0=add(weights, g.VEC4, g.ARRAY_BUFFER)),
                       indices=add(indices, g.SCALAR, g.ELEMENT_ARRAY_BUFFER))
    inverse_bind = np.tile(np.eye(4, dtype=np.float32), (skel.n_joints, 1, 1))
    inverse_bind[:, 3, :3] = -world_rest  # column-major: the translation sits in the last row
    ibm = add(inverse_bind.reshape(skel.n_joints, 16), g.MAT4)

    nodes = []
    for j in range(skel.n_joints):
        rest = root_positions[0] if j == 0 else skel.offsets[j]
        nodes.append(g.Node(name=skel.names[j], translation=[float(v) for v in rest], rotation=[0.0, 0.0, 0.0, 1.0],
                            children=list(skel.children[j])))
    mesh_node = len(nodes)
    nodes.append(g.Node(name=f"{name}_bones", mesh=0, skin=0))
    armature = len(nodes)
    nodes.append(g.Node(name=name, children=[0, mesh_node]))
    gltf = g.GLTF2(
        asset=g.Asset(generator="motionvae-toolkit runtime.bake", version="2.0"),
        scene=0, scenes=[g.Scene(nodes=[armature])], nodes=nodes,
        meshes=[g.Mesh(name=f"{name}_bones", primitives=[prim])],
        skins=[g.Skin(name=name, joints=list(range(skel.n_joints)), skeleton=0, inverseBindMatrices=ibm)],
        animations=[g.Animation(name=name, samplers=samplers, channels=channels)],
        accessors=accessors, bufferViews=views, buffers=[g.Buffer(byteLength=len(blob))])
    gltf.set_binary_blob(bytes(blob))
    with atomic_path(path, suffix=".glb") as tmp:
        gltf.save_binary(str(tmp))
