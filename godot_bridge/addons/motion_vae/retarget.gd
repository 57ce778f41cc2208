class_name MotionVAERetarget
extends RefCounted
## Maps a model's bones onto a Skeleton3D and turns model rotations into that skeleton's bone poses.
##
## The model's rest pose has identity local rotations (its offsets are the rest translations), so a
## model bone's local rotation q is also its rotation away from rest. A target bone b whose local rest
## rotation is R and whose parent's global rest rotation is C turns in the world exactly as the model's
## bone does with the pose rotation  C^-1 * q * C * R.  With an identity-rest skeleton (one built from
## the handshake) that is q itself. Target bones between mapped ones are left at rest.

var skeleton_version := -1  ## Skeleton3D.get_version() this mapping was built for
var model_bones := PackedStringArray()
var bone_map_hash := 0
var targets := PackedInt32Array()  ## per model bone: the target bone index, or -1 when unmapped
var _pre: Array[Quaternion] = []
var _post: Array[Quaternion] = []
var _root_parent_inverse := Transform3D.IDENTITY  # skeleton space -> the target root's parent space


## Builds the mapping; returns "" or a sentence saying what is wrong. bone_map: model name -> target name.
func setup(skeleton: Skeleton3D, names: PackedStringArray, bone_map: Dictionary = {}) -> String:
	model_bones = names
	bone_map_hash = bone_map.hash()
	skeleton_version = skeleton.get_version()
	targets.resize(names.size())
	_pre.resize(names.size())
	_post.resize(names.size())
	for i in names.size():
		var bone := skeleton.find_bone(str(bone_map.get(names[i], names[i])))
		targets[i] = bone
		_pre[i] = Quaternion.IDENTITY
		_post[i] = Quaternion.IDENTITY
		if bone < 0:
			continue
		var parent_rest := Quaternion.IDENTITY
		var parent := skeleton.get_bone_parent(bone)
		if parent >= 0:
			parent_rest = skeleton.get_bone_global_rest(parent).basis.get_rotation_quaternion()
		_pre[i] = parent_rest.inverse()
		_post[i] = parent_rest * skeleton.get_bone_rest(bone).basis.get_rotation_quaternion()
	if names.is_empty() or targets[0] < 0:
		return "skeleton %s has no bone for the model's root %s (set a bone_map entry)" % [
				skeleton.name, names[0] if not names.is_empty() else "(none)"]
	var root_parent := skeleton.get_bone_parent(targets[0])
	_root_parent_inverse = Transform3D.IDENTITY
	if root_parent >= 0:
		_root_parent_inverse = skeleton.get_bone_global_rest(root_parent).affine_inverse()
	return ""


## Whether the mapping is still valid for this skeleton, these model bones and this bone map.
func matches(skeleton: Skeleton3D, names: PackedStringArray, bone_map: Dictionary = {}) -> bool:
	return skeleton_version == skeleton.get_version() and model_bones == names and bone_map_hash == bone_map.hash()


## The pose rotation for model bone i of record index in frame.
func bone_rotation(frame: MotionVAEFrame, index: int, i: int) -> Quaternion:
	return (_pre[i] * frame.local_rotation(index, i) * _post[i]).normalized()


## The pose position of the target root bone: the model's root position times scale; with in_place
## only its height, so game code can move the character's body itself.
func root_position(frame: MotionVAEFrame, index: int, scale: float, in_place: bool = false) -> Vector3:
	var p := frame.root_position(index) * scale
	if in_place:
		p = Vector3(0.0, p.y, 0.0)
	return _root_parent_inverse * p


## Poses skeleton with record index of frame.
func apply(skeleton: Skeleton3D, frame: MotionVAEFrame, index: int, scale: float, in_place: bool) -> void:
	for i in targets.size():
		if targets[i] >= 0:
			skeleton.set_bone_pose_rotation(targets[i], bone_rotation(frame, index, i))
	skeleton.set_bone_pose_position(targets[0], root_position(frame, index, scale, in_place))
