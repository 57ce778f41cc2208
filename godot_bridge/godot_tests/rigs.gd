extends SceneTree
## Rigs of every convention driven by the addon's MotionVAESkeletonModifier (match_rig on), for
## tests/test_godot_e2e.py.
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
		var skeleton := MotionVAETestRigs.skeleton(rig)
		var client := _client(args["url"])
		var modifier := MotionVAESkeletonModifier.new()
		modifier.client = client
		modifier.humanoid_bone_map = MotionVAETestRigs.bone_map(rig)
		root.add_child(skeleton)
		skeleton.add_child(modifier)
		skeleton.skeleton_updated.connect(_record.bind(skeletons.size()))
		clients.append(client)
		skeletons.append(skeleton)
		modifiers.append(modifier)
		names.append(str(rig["name"]))
		var bones := MotionVAETestRigs.rest_report(skeleton)
		result["rigs"][names[-1]] = {"bones": bones, "frames": [], "reply": {}}
	create_timer(float(args.get("timeout", "120"))).timeout.connect(_finish.bind("timed out"))


func _client(url: String) -> MotionVAEClient:
	return MotionVAETestRigs.client(root, url, seed_value, result["errors"], _on_spawned)


func _on_spawned() -> void:
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
	result["reference"].append(MotionVAETestRigs.frame_report(frame))


func _record(rig: int) -> void:
	if target < 0 or recorded.has(rig) or modifiers[rig].applied_frame != target:
		return
	var pose := MotionVAETestRigs.pose_report(skeletons[rig])
	pose["frame"] = target
	result["rigs"][names[rig]]["frames"].append(pose)
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
