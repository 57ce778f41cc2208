class_name MotionVAESkeletonBuilder
extends RefCounted
## Builds a Skeleton3D matching the model's skeleton from the server's handshake, or Godot's humanoid
## reference skeleton (SkeletonProfileHumanoid), which MotionVAESkeletonModifier's match_rig drives.


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


## Replaces skeleton's bones with SkeletonProfileHumanoid's: its bone names (Hips, LeftUpperLeg, ...),
## parents and reference poses (a T-pose about 1.4 m tall, feet on the ground).
static func build_humanoid(skeleton: Skeleton3D) -> void:
	var profile := SkeletonProfileHumanoid.new()
	skeleton.clear_bones()
	for i in profile.bone_size:
		skeleton.add_bone(profile.get_bone_name(i))
	for i in profile.bone_size:
		if profile.get_bone_parent(i) != &"":
			skeleton.set_bone_parent(i, skeleton.find_bone(profile.get_bone_parent(i)))
		skeleton.set_bone_rest(i, profile.get_reference_pose(i))
	skeleton.reset_bone_poses()
