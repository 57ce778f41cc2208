"""Exporting an armature's baked Action to .glb or .fbx with the exporters that ship with Blender."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import bpy

from .errors import AddonError

FORMATS = (".glb", ".fbx")


@contextmanager
def _only_selected(context: bpy.types.Context, objects: list[bpy.types.Object]) -> Iterator[None]:
    """Select just objects for the exporters' selection filter, then put the user's selection back."""
    layer = context.view_layer
    before = [o for o in layer.objects if o.select_get()]
    active = layer.objects.active
    try:
        for o in before:
            o.select_set(False)
        for o in objects:
            o.select_set(True)
        layer.objects.active = objects[0]
        yield
    finally:
        for o in layer.objects:
            o.select_set(o in before)
        layer.objects.active = active


def export_animation(context: bpy.types.Context, obj: bpy.types.Object, path: Path) -> None:
    """Write obj (with its child meshes) and its active Action to path (.glb or .fbx)."""
    if path.suffix.lower() not in FORMATS:
        raise AddonError(f"{path.name}: choose a file name ending in .glb or .fbx.")
    if obj.animation_data is None or obj.animation_data.action is None:
        raise AddonError(f"'{obj.name}' has no baked animation: press Bake first.")
    if not path.parent.is_dir():
        raise AddonError(f"{path.parent} does not exist.")
    objects = [obj] + [c for c in obj.children if c.type == "MESH"]
    with _only_selected(context, objects):
        if path.suffix.lower() == ".glb":
            # Slid to zero, the clip starts at t = 0 as `python -m runtime.bake` clips do.
            bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB", use_selection=True,
                                      export_animations=True, export_animation_mode="ACTIVE_ACTIONS",
                                      export_anim_slide_to_zero=True)
        else:
            # Leaf bones are an FBX habit that game engines import as extra joints.
            bpy.ops.export_scene.fbx(filepath=str(path), use_selection=True, object_types={"ARMATURE", "MESH"},
                                     add_leaf_bones=False, bake_anim=True, bake_anim_use_all_actions=False,
                                     bake_anim_use_nla_strips=False)
