class_name MotionVAETestRigs
extends RefCounted
## Builds the test rigs described in JSON by tests/test_godot_e2e.py (test drivers only).


## A skeleton from rest heads and global rest rotations (bone axes anywhere: rolled bones), or Godot's own
## SkeletonProfileHumanoid reference skeleton when the rig says "profile".
static func skeleton(rig: Dictionary) -> Skeleton3D:
	var out := Skeleton3D.new()
	out.name = str(rig["name"])
	if rig.get("profile", false):
		MotionVAESkeletonBuilder.build_humanoid(out)
		return out
	var bones: Array = rig["bones"]
	var parents: Array = rig["parents"]
	var heads: Array = rig["heads"]
	var rests: Array = rig["rests"]
	for i in bones.size():
		out.add_bone(str(bones[i]))
	for i in bones.size():
		var parent := int(parents[i])
		var own := Quaternion(rests[i][0], rests[i][1], rests[i][2], rests[i][3])
		var head := Vector3(heads[i][0], heads[i][1], heads[i][2])
		var parent_rotation := Quaternion.IDENTITY
		var parent_head := Vector3.ZERO
		if parent >= 0:
			parent_rotation = Quaternion(rests[parent][0], rests[parent][1], rests[parent][2], rests[parent][3])
			parent_head = Vector3(heads[parent][0], heads[parent][1], heads[parent][2])
		out.set_bone_parent(i, parent)
		out.set_bone_rest(i, Transform3D(Basis(parent_rotation.inverse() * own),
				parent_rotation.inverse() * (head - parent_head)))
	out.reset_bone_poses()
	return out


## The rig's humanoid BoneMap (profile bone -> skeleton bone), or null when it has none.
static func bone_map(rig: Dictionary) -> BoneMap:
	if rig.get("bone_map") == null:
		return null
	var entries: Dictionary = rig["bone_map"]
	var out := BoneMap.new()
	out.profile = SkeletonProfileHumanoid.new()
	for profile_bone: String in entries:
		out.set_skeleton_bone_name(StringName(profile_bone), StringName(entries[profile_bone]))
	return out


## Each bone's name, parent, global rest rotation and rest head, as the tests read them.
static func rest_report(skeleton: Skeleton3D) -> Array:
	var bones := []
	for i in skeleton.get_bone_count():
		var g := skeleton.get_bone_global_rest(i)
		var q := g.basis.get_rotation_quaternion()
		bones.append({"name": skeleton.get_bone_name(i), "parent": skeleton.get_bone_parent(i),
				"rest": [q.x, q.y, q.z, q.w], "head": [g.origin.x, g.origin.y, g.origin.z]})
	return bones


## Every bone's global pose rotation and head, as the tests read them.
static func pose_report(skeleton: Skeleton3D) -> Dictionary:
	var rotations := []
	var heads := []
	for i in skeleton.get_bone_count():
		var g := skeleton.get_bone_global_pose(i)
		var q := g.basis.get_rotation_quaternion()
		rotations.append([q.x, q.y, q.z, q.w])
		heads.append([g.origin.x, g.origin.y, g.origin.z])
	return {"rotations": rotations, "heads": heads}


## A client added under parent that spawns one character on start frame 0 with seed once connected, calls
## on_spawned when that is done, and appends its errors and refused requests to errors.
static func client(parent: Node, url: String, seed_value: int, errors: Array, on_spawned: Callable) -> MotionVAEClient:
	var out := MotionVAEClient.new()
	out.url = url
	out.reconnect = false
	out.spawn_on_connect = 0
	out.random_seed = seed_value
	out.connected.connect(func(_hello: Dictionary) -> void: out.spawn(1, 0))
	out.error.connect(func(code: String, message: String) -> void: errors.append(code + ": " + message))
	out.reply_received.connect(func(reply: Dictionary) -> void:
		if reply.get("type") == "error":
			errors.append(str(reply))
		elif reply.get("request") == "spawn":
			on_spawned.call())
	parent.add_child(out)
	return out


## Character record 0 of frame: its frame number, root position and local rotations, as the tests read them.
static func frame_report(frame: MotionVAEFrame) -> Dictionary:
	var rotations := []
	for i in frame.bone_count:
		var q := frame.local_rotation(0, i)
		rotations.append([q.x, q.y, q.z, q.w])
	var p := frame.root_position(0)
	return {"frame": frame.frame, "root": [p.x, p.y, p.z], "rotations": rotations}
