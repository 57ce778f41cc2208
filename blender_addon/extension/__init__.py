"""Motion VAE for Blender: drive armatures live with a trained Motion VAE and bake its motion into Actions."""
import bpy
from bpy.app.handlers import persistent

from . import joystick, live, models, operators, props, ui

_CLASSES = operators.CLASSES + joystick.CLASSES + ui.CLASSES


@persistent
def _end_live_on_load(_file) -> None:
    """A new file has other objects: the live session's armature may not be the one it was driving."""
    live.end()


def register() -> None:
    """Register the settings, operators and panel."""
    props.register()
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.app.handlers.load_pre.append(_end_live_on_load)


def unregister() -> None:
    """Undo register(), ending any live session (and its network thread) first."""
    live.end()
    bpy.app.handlers.load_pre.remove(_end_live_on_load)
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
    props.unregister()
    models.clear()
