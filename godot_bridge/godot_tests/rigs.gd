extends SceneTree
## Rigs of every convention driven by the addon's MotionVAESkeletonModifier (match_rig on), for
## tests/test_godot_rigs.py.
##
## Args after "--": --url URL (a lockstep server) --rigs res://rigs_in.json --out res://rigs_out.json
##   --frames N --seed S
## rigs_in.json lists rigs (bones, parents, rest heads, global rest rotations, and optionally a humanoid
## BoneMap: profile bone -> skeleton bone); "profile" builds Godot's own SkeletonProfileHumanoid reference
## skeleton. Every rig has its own client (the server binds one rig per connection) and a reference client
## drives nothing; all use the same seed and start frame, so they stream the same motion. Once every
## modifier has its bind reply, each round steps every client and records the reference frame and every
## rig's global bone poses after its modifier applied that frame.

var clients: Array[MotionVAEClient] = []
var skeletons: Array[Skeleton3D] = []
var modifiers: Array[MotionVAESkeletonModifier] = []
var names: Array[String] = []
var result := {"reference": [], "rigs": {}, "errors": []}
var wanted := 60
var out_path := ""
var seed_value := 7
var spawned := 0
var recording := false
var target := -1
var recorded := {}


func _initialize() -> void:
	var args := MotionVAETestArgs.parse()
	out_path = args["out"]
	wanted = int(args.get("frames", "60"))
	seed_value = int(args.get("seed", "7"))
	var spec: Dictionary = JSON.parse_string(FileAccess.get_file_as_string(args["rigs"]))
	clients.append(_client(args["url"]))
	clients[0].frame_received.connect(_on_reference)
	for rig: Dictionary in spec["rigs"]:
		var skeleton := _profile_skeleton() if rig.get("profile", false) else _skeleton(rig)
		skeleton.name = str(rig["name"])
		var client := _client(args["url"])
		var modifier := MotionVAESkeletonModifier.new()
		modifier.client = client
		if rig.get("bone_map") != null:
			modifier.humanoid_bone_map = _bone_map(rig["bone_map"])
		root.add_child(skeleton)
		skeleton.add_child(modifier)
		skeleton.skeleton_updated.connect(_record.bind(skeletons.size()))
		clients.append(client)
		skeletons.append(skeleton)
		modifiers.append(modifier)
		names.append(str(rig["name"]))
		var bones := []
		for i in skeleton.get_bone_count():
			var g := skeleton.get_bone_global_rest(i)
			var q := g.basis.get_rotation_quaternion()
			bones.append({"name": skeleton.get_bone_name(i), "parent": skeleton.get_bone_parent(i),
					"rest": [q.x, q.y, q.z, q.w], "head": [g.origin.x, g.origin.y, g.origin.z]})
		result["rigs"][names[-1]] = {"bones": bones, "frames": [], "reply": {}}
	create_timer(float(args.get("timeout", "120"))).timeout.connect(_finish.bind("timed out"))


func _client(url: String) -> MotionVAEClient:
	var client := MotionVAEClient.new()
	client.url = url
	client.reconnect = false
	client.spawn_on_connect = 0
	client.random_seed = seed_value
	client.connected.connect(func(_hello: Dictionary) -> void: client.spawn(1, 0))
	client.reply_received.connect(_on_reply)
	client.error.connect(func(code: String, message: String) -> void: result["errors"].append(code + ": " + message))
	root.add_child(client)
	return client


## A skeleton from rest heads and global rest rotations (bone axes anywhere: rolled bones).
func _skeleton(rig: Dictionary) -> Skeleton3D:
	var skeleton := Skeleton3D.new()
	var bones: Array = rig["bones"]
	var parents: Array = rig["parents"]
	var heads: Array = rig["heads"]
	var rests: Array = rig["rests"]
	for i in bones.size():
		skeleton.add_bone(str(bones[i]))
	for i in bones.size():
		var parent := int(parents[i])
		var own := Quaternion(rests[i][0], rests[i][1], rests[i][2], rests[i][3])
		var head := Vector3(heads[i][0], heads[i][1], heads[i][2])
		var parent_rotation := Quaternion.IDENTITY
		var parent_head := Vector3.ZERO
		if parent >= 0:
			parent_rotation = Quaternion(rests[parent][0], rests[parent][1], rests[parent][2], rests[parent][3])
			parent_head = Vector3(heads[parent][0], heads[parent][1], heads[parent][2])
		skeleton.set_bone_parent(i, parent)
		skeleton.set_bone_rest(i, Transform3D(Basis(parent_rotation.inverse() * own),
				parent_rotation.inverse() * (head - parent_head)))
	skeleton.reset_bone_poses()
	return skeleton


## Godot's own humanoid reference skeleton: SkeletonProfileHumanoid's bones and reference poses.
func _profile_skeleton() -> Skeleton3D:
	var skeleton := Skeleton3D.new()
	MotionVAESkeletonBuilder.build_humanoid(skeleton)
	return skeleton


func _bone_map(entries: Dictionary) -> BoneMap:
	var bone_map := BoneMap.new()
	bone_map.profile = SkeletonProfileHumanoid.new()
	for profile_bone: String in entries:
		bone_map.set_skeleton_bone_name(StringName(profile_bone), StringName(entries[profile_bone]))
	return bone_map


func _on_reply(reply: Dictionary) -> void:
	if reply.get("type") == "error":
		result["errors"].append(str(reply))
	elif reply.get("request") == "spawn":
		spawned += 1
		if spawned == clients.size():
			_step_all()


func _step_all() -> void:
	target = -1
	recorded.clear()
	for client in clients:
		client.step()


func _on_reference(frame: MotionVAEFrame) -> void:
	if not recording:
		for modifier in modifiers:
			if modifier.bind_reply.is_empty():
				_step_all.call_deferred()
				return
		recording = true
		for i in modifiers.size():
			result["rigs"][names[i]]["reply"] = modifiers[i].bind_reply
		_step_all.call_deferred()
		return
	target = frame.frame
	var rotations := []
	for i in frame.bone_count:
		var q := frame.local_rotation(0, i)
		rotations.append([q.x, q.y, q.z, q.w])
	var p := frame.root_position(0)
	result["reference"].append({"frame": frame.frame, "root": [p.x, p.y, p.z], "rotations": rotations})


func _record(rig: int) -> void:
	if target < 0 or recorded.has(rig) or modifiers[rig].applied_frame != target:
		return
	var skeleton := skeletons[rig]
	var rotations := []
	var heads := []
	for i in skeleton.get_bone_count():
		var g := skeleton.get_bone_global_pose(i)
		var q := g.basis.get_rotation_quaternion()
		rotations.append([q.x, q.y, q.z, q.w])
		heads.append([g.origin.x, g.origin.y, g.origin.z])
	result["rigs"][names[rig]]["frames"].append({"frame": target, "rotations": rotations, "heads": heads})
	recorded[rig] = true
	if recorded.size() == skeletons.size():
		if result["reference"].size() >= wanted:
			_finish("")
		else:
			_step_all()


func _finish(problem: String) -> void:
	if problem != "":
		result["errors"].append(problem)
	MotionVAETestArgs.write_json(out_path, result)
	quit(0 if problem == "" else 1)
