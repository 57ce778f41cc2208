"""The sidebar panel in the 3D view (N panel, tab "Motion VAE") and its bone-map table."""
import bpy

from . import live, models
from .bridge_client import STREAMED_TASKS
from .props import MODES, POLICY_OF_MODE

# The settings each steering mode reads, drawn only while that mode is picked.
MODE_SETTINGS = {"JOYSTICK": ("joystick_speed", "stick"), "TARGET": ("target_object",), "CURVE": ("curve_object",)}


def _armature(context: bpy.types.Context) -> bpy.types.Object | None:
    """The armature the buttons would act on, or None."""
    obj = context.scene.motion_vae.armature or context.active_object
    return obj if obj is not None and obj.type == "ARMATURE" else None


class MOTION_VAE_UL_bone_map(bpy.types.UIList):
    """Rows of joint -> bone, the bone picked from the armature's bones."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row(align=True)
        bones = data.id_data.data.bones
        row.alert = bool(item.bone) and item.bone not in bones
        row.label(text=item.joint, icon="BONE_DATA" if item.bone else "ERROR")
        row.prop_search(item, "bone", data.id_data.data, "bones", text="")


class MOTION_VAE_PT_main(bpy.types.Panel):
    """Model, target, source, mode and the live / bake buttons."""

    bl_idname = "MOTION_VAE_PT_main"
    bl_label = "Motion VAE"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Motion VAE"

    def draw(self, context):
        settings = context.scene.motion_vae
        layout = self.layout
        layout.prop(settings, "model_dir")
        layout.prop(settings, "precision", expand=True)
        row = layout.row(align=True)
        row.prop(settings, "armature")
        row.operator("motion_vae.create_armature", text="", icon="ADD")

        layout.prop(settings, "source", expand=True)
        server = settings.source == "SERVER"
        if server:
            col = layout.column(align=True)
            col.prop(settings, "server_host")
            col.prop(settings, "server_port")
            col.prop(settings, "server_token")

        # A server's policies are known once connected; until then only what the protocol can carry is offered.
        model = models.peek(settings.model_dir, settings.precision)
        tasks = STREAMED_TASKS if server else (model.policies if model is not None else {})
        box = layout.box()
        box.label(text="Mode")
        for mode, label, _ in MODES:
            item = box.row()
            item.enabled = mode not in POLICY_OF_MODE or POLICY_OF_MODE[mode] in tasks
            item.prop_enum(settings, "mode", mode, text=label)
        if not server and not any(task in tasks for task in POLICY_OF_MODE.values()):
            box.label(text="Steering needs a model with control policies", icon="INFO")
        for name in MODE_SETTINGS.get(settings.mode, ()):
            box.prop(settings, name)
        if settings.mode == "JOYSTICK":
            box.operator("motion_vae.steer", icon="VIEW_PAN")

        col = layout.column(align=True)
        col.prop(settings, "seed")
        col.prop(settings, "start")
        col.prop(settings, "frames")
        layout.prop(settings, "foot_lock")

        row = layout.row(align=True)
        if live.playing():
            row.operator("motion_vae.stop", icon="PAUSE")
        else:
            row.operator("motion_vae.play", icon="PLAY")
        row.operator("motion_vae.reset", icon="LOOP_BACK")
        status = live.status()
        if status is not None:
            layout.label(text=status[1], icon=status[0])
        layout.operator("motion_vae.bake", icon="REC")
        layout.operator("motion_vae.export_animation", text="Export .glb / .fbx", icon="EXPORT")


class MOTION_VAE_PT_bone_map(bpy.types.Panel):
    """The target armature's bone map: which bone each model joint drives."""

    bl_label = "Bone Map"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Motion VAE"
    bl_parent_id = "MOTION_VAE_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        obj = _armature(context)
        if obj is None:
            self.layout.label(text="No target armature")
            return
        rig = obj.motion_vae
        self.layout.template_list("MOTION_VAE_UL_bone_map", "", rig, "bone_map", rig, "active_row", rows=8)
        self.layout.operator("motion_vae.auto_map", icon="LINKED")


CLASSES = (MOTION_VAE_UL_bone_map, MOTION_VAE_PT_main, MOTION_VAE_PT_bone_map)
