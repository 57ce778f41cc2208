extends SceneTree
## Rigs baked into AnimationLibraries by the addon's MotionVAEBaker (match_rig on), for tests/test_godot_e2e.py.
##
## Args after "--": --url URL (a lockstep server) --rigs res://bake_in.json --out res://bake_out.json
##   --frames N --seed S
## bake_in.json lists rigs as for rigs.gd. Every rig has its own client and baker (the server binds one rig per
## connection) and a reference client drives nothing; all use the same seed and start frame, so they stream the
## same motion. Each round steps every client; once every baker has saved its library, the driver loads each
## library back from disk, poses the rig with every key and reports the rig's global bone poses per frame, with
## the reference frames, in rigs.gd's layout.

var clients: Array[MotionVAEClient] = []
var bakers: Array[MotionVAEBaker] = []
var rigs: Array[Dictionary] = []
var result := {"reference": [], "rigs": {}, "errors": []}
var out_path := ""
var seed_value := 7
var spawned := 0
var answered := 0
var saved := 0


func _initialize() -> void:
	var args := MotionVAETestArgs.parse()
	out_path = args["out"]
	seed_value = int(args.get("seed", "7"))
	var spec: Dictionary = JSON.parse_string(FileAccess.get_file_as_string(args["rigs"]))
	clients.append(_client(args["url"]))
	clients[0].frame_received.connect(_on_reference)
	for rig: Dictionary in spec["rigs"]:
		var skeleton := MotionVAETestRigs.skeleton(rig)
		var baker := MotionVAEBaker.new()
		baker.client = _client(args["url"])
		baker.skeleton = skeleton
		baker.humanoid_bone_map = MotionVAETestRigs.bone_map(rig)
		baker.frame_count = int(args.get("frames", "60"))
		baker.output_path = "res://baked_%s.tres" % rig["name"]
		baker.baked.connect(_on_baked)
		root.add_child(skeleton)
		root.add_child(baker)
		clients.append(baker.client)
		bakers.append(baker)
		rigs.append(rig)
	create_timer(float(args.get("timeout", "120"))).timeout.connect(_finish.bind("timed out"))


func _client(url: String) -> MotionVAEClient:
	var client := MotionVAETestRigs.client(root, url, seed_value, result["errors"], _on_spawned)
	client.frame_received.connect(_on_frame)
	return client


func _on_spawned() -> void:
	spawned += 1
	if spawned == clients.size():
		for baker in bakers:
			if baker.start() != OK:
				_finish("a baker did not start")
				return
		_step_all()


func _step_all() -> void:
	answered = 0
	for client in clients:
		client.step()


func _on_reference(frame: MotionVAEFrame) -> void:
	result["reference"].append(MotionVAETestRigs.frame_report(frame))


func _on_frame(_frame: MotionVAEFrame) -> void:
	answered += 1
	if answered == clients.size() and saved < bakers.size():
		_step_all.call_deferred()


func _on_baked(path: String, err: Error) -> void:
	if err != OK:
		_finish("%s was not baked: %s" % [path, error_string(err)])
		return
	saved += 1
	if saved == bakers.size():
		for i in bakers.size():
			result["rigs"][str(rigs[i]["name"])] = _play_back(bakers[i])
		_finish("")


## The baker's rig posed with every key of its library as loaded from disk: bind reply, rest and per-frame poses.
func _play_back(baker: MotionVAEBaker) -> Dictionary:
	var skeleton := baker.skeleton
	var report := {"bones": MotionVAETestRigs.rest_report(skeleton), "frames": [], "reply": baker.bind_reply}
	var library := ResourceLoader.load(baker.output_path, "", ResourceLoader.CACHE_MODE_IGNORE) as AnimationLibrary
	var anim := library.get_animation(baker.animation_name)
	for k in baker.frame_count:
		skeleton.reset_bone_poses()
		for t in anim.get_track_count():
			var bone := skeleton.find_bone(str(anim.track_get_path(t).get_concatenated_subnames()))
			if anim.track_get_type(t) == Animation.TYPE_ROTATION_3D:
				skeleton.set_bone_pose_rotation(bone, anim.track_get_key_value(t, k))
			else:
				skeleton.set_bone_pose_position(bone, anim.track_get_key_value(t, k))
		var pose := MotionVAETestRigs.pose_report(skeleton)
		pose["frame"] = baker.first_frame + k
		report["frames"].append(pose)
	return report


func _finish(problem: String) -> void:
	if problem != "":
		result["errors"].append(problem)
	MotionVAETestArgs.write_json(out_path, result)
	quit(0 if problem == "" else 1)
