extends SceneTree
## End-to-end driver for tests/test_godot_e2e.py, using the addon unchanged against a lockstep server.
##
## Args after "--": --url URL --out res://result.json --frames N --bake-frames M --library res://lib.tres
## Two skeletons follow character 0: "plain", built from the handshake (identity rest), and "rotated",
## the same shape with random rest rotations, which exercises rest-pose compensation. After each frame
## is applied the driver records both skeletons' poses, then asks for the next step; a MotionVAEBaker
## records M frames (from the first after its bind) into an AnimationLibrary meanwhile. The JSON result lets the
## test compare everything with the frames the server sent.

var client: MotionVAEClient
var plain := Skeleton3D.new()
var rotated := Skeleton3D.new()
var plain_modifier := MotionVAESkeletonModifier.new()
var rotated_modifier := MotionVAESkeletonModifier.new()
var baker := MotionVAEBaker.new()
var rest_globals: Array[Quaternion] = []
var plain_rows := {}
var rotated_rows := {}
var result := {"frames": [], "errors": [], "baked": "", "round_trip_ms": []}
var wanted := 300
var out_path := "res://result.json"
var step_sent_usec := -1


func _initialize() -> void:
	var args := MotionVAETestArgs.parse()
	wanted = int(args.get("frames", "300"))
	out_path = args.get("out", out_path)
	client = MotionVAEClient.new()
	client.url = args["url"]
	client.reconnect = false
	client.spawn_on_connect = 1
	client.connected.connect(_on_connected)
	client.error.connect(func(code: String, message: String) -> void: result["errors"].append(code + ": " + message))
	client.reply_received.connect(_on_reply)
	client.frame_received.connect(_on_frame)
	root.add_child(client)
	plain.name = "Skeleton3D"
	rotated.name = "Rotated"
	for pair: Array in [[plain, plain_modifier], [rotated, rotated_modifier]]:
		var skeleton: Skeleton3D = pair[0]
		var modifier: MotionVAESkeletonModifier = pair[1]
		modifier.client = client
		root.add_child(skeleton)
		skeleton.add_child(modifier)
	plain.skeleton_updated.connect(_record.bind(plain))
	rotated.skeleton_updated.connect(_record.bind(rotated))
	baker.client = client
	baker.skeleton = plain
	baker.frame_count = int(args.get("bake-frames", "60"))
	baker.output_path = args.get("library", "res://baked.tres")
	baker.baked.connect(func(path: String, err: Error) -> void:
		result["baked"] = path if err == OK else error_string(err)
		result["baked_first"] = baker.first_frame)
	root.add_child(baker)
	create_timer(float(args.get("timeout", "60"))).timeout.connect(_finish.bind("timed out"))


func _on_connected(hello: Dictionary) -> void:
	MotionVAESkeletonBuilder.build(plain, hello)
	_build_rotated(hello)
	result["bones"] = client.bone_names


## Same joints as the model, but every bone's rest frame turned by a random rotation: the global rest
## positions stay the model's, the bone axes do not.
func _build_rotated(hello: Dictionary) -> void:
	var names: Array = hello["skeleton"]["names"]
	var parents: Array = hello["skeleton"]["parents"]
	var offsets: Array = hello["skeleton"]["offsets"]
	var rng := RandomNumberGenerator.new()
	rng.seed = 12345
	rotated.clear_bones()
	rest_globals.clear()
	for i in names.size():
		rotated.add_bone(str(names[i]))
		var axis := Vector3(rng.randf_range(-1, 1), rng.randf_range(-1, 1), rng.randf_range(-1, 1)).normalized()
		rest_globals.append(Quaternion(axis, rng.randf_range(-PI, PI)))
	for i in names.size():
		var parent := int(parents[i])
		var parent_global := rest_globals[parent] if parent >= 0 else Quaternion.IDENTITY
		var offset := Vector3(float(offsets[i][0]), float(offsets[i][1]), float(offsets[i][2]))
		rotated.set_bone_parent(i, parent)
		rotated.set_bone_rest(i, Transform3D(Basis(parent_global.inverse() * rest_globals[i]),
				parent_global.inverse() * offset))
	rotated.reset_bone_poses()


func _on_reply(reply: Dictionary) -> void:
	if reply.get("request") == "spawn":
		baker.start()
		_request_step()


func _request_step() -> void:
	step_sent_usec = Time.get_ticks_usec()
	client.step()


## Step request sent -> its frame decoded, as GDScript sees it; the modifiers apply client.latest_frame
## in the next skeleton update.
func _on_frame(_frame: MotionVAEFrame) -> void:
	if step_sent_usec >= 0:
		result["round_trip_ms"].append((Time.get_ticks_usec() - step_sent_usec) / 1000.0)
		step_sent_usec = -1


func _record(skeleton: Skeleton3D) -> void:
	var modifier := plain_modifier if skeleton == plain else rotated_modifier
	var frame := modifier.applied_frame
	if frame < 0:
		return
	var row := {}
	if skeleton == plain:
		var rotations := []
		for i in skeleton.get_bone_count():
			var q := skeleton.get_bone_pose_rotation(i)
			rotations.append([q.x, q.y, q.z, q.w])
		var p := skeleton.get_bone_pose_position(0)
		row = {"root": [p.x, p.y, p.z], "rotations": rotations}
		plain_rows[frame] = row
	else:
		var deltas := []
		var positions := []
		for i in skeleton.get_bone_count():
			var g := skeleton.get_bone_global_pose(i)
			var q := g.basis.get_rotation_quaternion() * rest_globals[i].inverse()
			deltas.append([q.x, q.y, q.z, q.w])
			positions.append([g.origin.x, g.origin.y, g.origin.z])
		rotated_rows[frame] = {"global_rotations": deltas, "positions": positions}
	if plain_rows.has(frame) and rotated_rows.has(frame) and frame != _last_recorded():
		var merged: Dictionary = plain_rows[frame].duplicate()
		merged.merge(rotated_rows[frame])
		merged["frame"] = frame
		result["frames"].append(merged)
		if result["frames"].size() >= wanted and not baker.is_recording():
			_finish("")
		else:
			_request_step()


func _last_recorded() -> int:
	var frames: Array = result["frames"]
	return -1 if frames.is_empty() else int(frames[-1]["frame"])


func _finish(problem: String) -> void:
	if problem != "":
		result["errors"].append(problem)
	MotionVAETestArgs.write_json(out_path, result)
	quit(0 if problem == "" else 1)
