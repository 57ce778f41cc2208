class_name MotionVAESkeletonBuilder
extends RefCounted
## Builds a Skeleton3D matching the model's skeleton from the server's handshake.


## Replaces skeleton's bones with the handshake's: same names and parents, identity rest rotations
## and the model's offsets (metres times scale) as rest positions.
static func build(skeleton: Skeleton3D, hello: Dictionary, scale: float = 1.0) -> void:
	var desc: Dictionary = hello["skeleton"]
	var names: Array = desc["names"]
	var parents: Array = desc["parents"]
	var offsets: Array = desc["offsets"]
	skeleton.clear_bones()
	for i in names.size():
		skeleton.add_bone(str(names[i]))
	for i in names.size():
		var offset: Array = offsets[i]
		skeleton.set_bone_parent(i, int(parents[i]))
		skeleton.set_bone_rest(i, Transform3D(Basis.IDENTITY,
				Vector3(float(offset[0]), float(offset[1]), float(offset[2])) * scale))
	skeleton.reset_bone_poses()
