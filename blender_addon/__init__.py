"""The Blender extension (extension/) and its build tool (`python -m blender_addon.build`)."""
