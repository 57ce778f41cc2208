class_name MotionVAERetarget
extends RefCounted
## Maps a model's bones onto a Skeleton3D and turns model rotations into that skeleton's bone poses.
##
## The model's rest pose has identity local rotations (its offsets are the rest translations), so a
## model bone's local rotation q is also its rotation away from rest. A target bone b whose local rest
## rotation is R and whose parent's global rest rotation is C turns in the world exactly as the model's
## bone does with the pose rotation  C^-1 * q * C * R.  With an identity-rest skeleton (one built from
## the handshake) that is q itself. Target bones between mapped ones are left at rest.
##
## setup_bound instead takes the server's reply to a bind message (PROTOCOL.md "Rigs"): bones matched by
## runtime/rigmap.py (presets, hierarchy, rest directions), each turned in the world as its joint with the rest
## alignment S, so an A-pose or otherwise posed rig takes the model's pose, and the root motion scaled by
## the rig's hip height.

var skeleton_version := -1  ## Skeleton3D.get_version() this mapping was built for
var model_bones := PackedStringArray()
var bone_map_hash := 0
var targets := PackedInt32Array()  ## per model bone: the target bone index, or -1 when unmapped
var _pre: Array[Quaternion] = []
var _post: Array[Quaternion] = []
var _root_parent_inverse := Transform3D.IDENTITY  # skeleton space -> the target root's parent space
var bound := false  ## whether the mapping came from a bind reply (setup_bound) rather than names
var root_scale := 1.0  ## rig units per model metre of root motion (1 unless bound)
var _parents := PackedInt32Array()  # the model's skeleton, for its world rotations (bound mode)
var _anchor := PackedInt32Array()  # per model bone: the model joint driving the nearest driven bone above, or -1
var _world: Array[Quaternion] = []


## Builds the mapping; returns "" or a sentence saying what is wrong. bone_map: model name -> target name.
func setup(skeleton: Skeleton3D, names: PackedStringArray, bone_map: Dictionary = {}) -> String:
	bound = false
	root_scale = 1.0
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
		skeleton_version = -1  # not a mapping: matches() stays false, so nothing is posed with it
		return "skeleton %s has no bone for the model's root %s (set a bone_map entry)" % [
				skeleton.name, names[0] if not names.is_empty() else "(none)"]
	var root_parent := skeleton.get_bone_parent(targets[0])
	_root_parent_inverse = Transform3D.IDENTITY
	if root_parent >= 0:
		_root_parent_inverse = skeleton.get_bone_global_rest(root_parent).affine_inverse()
	return ""


## Builds the mapping from a bind reply for this skeleton; returns "" or a sentence saying what is wrong.
## parents: the model skeleton's parents (hello.skeleton.parents).
func setup_bound(skeleton: Skeleton3D, names: PackedStringArray, parents: Array, reply: Dictionary) -> String:
	var bones: Array = reply.get("bones", [])
	var align: Array = reply.get("align", [])
	if bones.size() != names.size() or align.size() != names.size():
		return "the bind reply does not describe the model's %d bones" % names.size()
	bound = true
	model_bones = names
	skeleton_version = skeleton.get_version()
	root_scale = float(reply.get("root_scale", 1.0))
	_parents = PackedInt32Array(parents)
	targets.resize(names.size())
	_anchor.resize(names.size())
	_pre.resize(names.size())
	_post.resize(names.size())
	_world.resize(names.size())
	var joint_of := {}
	for i in names.size():
		targets[i] = int(bones[i]) if int(bones[i]) < skeleton.get_bone_count() else -1
		if targets[i] >= 0:
			joint_of[targets[i]] = i
	for i in names.size():
		_anchor[i] = -1
		_pre[i] = Quaternion.IDENTITY
		_post[i] = Quaternion.IDENTITY
		var bone := targets[i]
		if bone < 0:
			continue
		var s: Array = align[i]
		_post[i] = Quaternion(s[0], s[1], s[2], s[3]).inverse() * _global_rest(skeleton, bone)
		var parent := skeleton.get_bone_parent(bone)
		var up := parent
		while up >= 0 and not joint_of.has(up):
			up = skeleton.get_bone_parent(up)
		var anchor_align := Quaternion.IDENTITY
		if up >= 0:
			_anchor[i] = joint_of[up]
			var a: Array = align[_anchor[i]]
			anchor_align = Quaternion(a[0], a[1], a[2], a[3])
		_pre[i] = _global_rest(skeleton, parent).inverse() * anchor_align
	if targets[0] < 0:
		bound = false
		skeleton_version = -1
		return "the server matched no bone of %s to the model's root %s" % [skeleton.name, names[0]]
	var root_parent := skeleton.get_bone_parent(targets[0])
	_root_parent_inverse = Transform3D.IDENTITY
	if root_parent >= 0:
		_root_parent_inverse = skeleton.get_bone_global_rest(root_parent).affine_inverse()
	return ""


## The names a skeleton's bones are bound under: their humanoid profile names through humanoid_bone_map, else
## their own.
static func bind_names(skeleton: Skeleton3D, humanoid_bone_map: BoneMap) -> PackedStringArray:
	var out := PackedStringArray()
	for i in skeleton.get_bone_count():
		var own := skeleton.get_bone_name(i)
		var profile := humanoid_bone_map.find_profile_bone_name(own) if humanoid_bone_map != null else &""
		out.append(str(profile) if profile != &"" else own)
	return out


func _global_rest(skeleton: Skeleton3D, bone: int) -> Quaternion:
	if bone < 0:
		return Quaternion.IDENTITY
	return skeleton.get_bone_global_rest(bone).basis.get_rotation_quaternion()


## Whether the mapping is still valid for this skeleton, these model bones and this bone map.
func matches(skeleton: Skeleton3D, names: PackedStringArray, bone_map: Dictionary = {}) -> bool:
	return skeleton_version == skeleton.get_version() and model_bones == names and bone_map_hash == bone_map.hash()


## The pose rotation for model bone i of record index in frame (bound: call world_rotations first).
func bone_rotation(frame: MotionVAEFrame, index: int, i: int) -> Quaternion:
	if bound:
		var above := Quaternion.IDENTITY if _anchor[i] < 0 else _world[_anchor[i]]
		return (_pre[i] * above.inverse() * _world[i] * _post[i]).normalized()
	return (_pre[i] * frame.local_rotation(index, i) * _post[i]).normalized()


## Bound mode: the model bones' world rotations of record index, which bone_rotation reads.
func world_rotations(frame: MotionVAEFrame, index: int) -> void:
	for i in _parents.size():
		var q := frame.local_rotation(index, i)
		_world[i] = q if _parents[i] < 0 else _world[_parents[i]] * q


## The pose position of the target root bone: the model's root position times scale; with in_place
## only its height, so game code can move the character's body itself.
func root_position(frame: MotionVAEFrame, index: int, scale: float, in_place: bool = false) -> Vector3:
	var p := frame.root_position(index) * scale * root_scale
	if in_place:
		p = Vector3(0.0, p.y, 0.0)
	return _root_parent_inverse * p


## Poses skeleton with record index of frame.
func apply(skeleton: Skeleton3D, frame: MotionVAEFrame, index: int, scale: float, in_place: bool) -> void:
	if bound:
		world_rotations(frame, index)
	for i in targets.size():
		if targets[i] >= 0:
			skeleton.set_bone_pose_rotation(targets[i], bone_rotation(frame, index, i))
	skeleton.set_bone_pose_position(targets[0], root_position(frame, index, scale, in_place))
