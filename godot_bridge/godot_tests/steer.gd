extends SceneTree
## Steers one character with the addon's MotionVAEInput, unchanged, for tests/test_godot_e2e.py.
##
## Args after "--": --url URL (a lockstep server with a joystick policy) --out res://steer.json
##   --frames N (per phase)
## Each phase holds one ui_* action as a player would hold a key; MotionVAEInput turns it into a joystick
## control message, then the driver steps the server frame by frame and records the character's root.

const PHASES := ["ui_right", "ui_up"]  # no camera: +X, then -Z (away from a default camera)

var client := MotionVAEClient.new()
var input := MotionVAEInput.new()
var result := {"phases": PHASES, "frames": [], "errors": []}
var per_phase := 150
var phase := -1
var done_in_phase := 0
var out_path := ""


func _initialize() -> void:
	var args := MotionVAETestArgs.parse()
	out_path = args["out"]
	per_phase = int(args.get("frames", "150"))
	client.url = args["url"]
	client.reconnect = false
	client.spawn_on_connect = 1
	client.error.connect(func(code: String, message: String) -> void: result["errors"].append(code + ": " + message))
	client.reply_received.connect(_on_reply)
	client.frame_received.connect(_on_frame)
	root.add_child(client)
	input.client = client
	input.send_interval = 0.0  # send as soon as the held action changes
	root.add_child(input)
	create_timer(float(args.get("timeout", "60"))).timeout.connect(_finish.bind("timed out"))


func _on_reply(reply: Dictionary) -> void:
	if reply.get("request") == "spawn":
		_next_phase()
	elif reply.get("type") == "error":
		result["errors"].append(str(reply))


## Hold the next phase's action, let MotionVAEInput send its command, then step.
func _next_phase() -> void:
	if phase >= 0:
		Input.action_release(PHASES[phase])
	phase += 1
	done_in_phase = 0
	if phase >= PHASES.size():
		_finish("")
		return
	Input.action_press(PHASES[phase])
	# Two idle frames: one for MotionVAEInput._process to send, one for the client to flush it.
	await process_frame
	await process_frame
	client.step()


func _on_frame(frame: MotionVAEFrame) -> void:
	if phase < 0 or phase >= PHASES.size() or frame.character_count() == 0:
		return
	var p := frame.root_position(0)
	result["frames"].append({"phase": phase, "frame": frame.frame, "root": [p.x, p.y, p.z],
			"reset": frame.is_reset(0)})
	done_in_phase += 1
	if done_in_phase >= per_phase:
		_next_phase()
	else:
		client.step()


func _finish(problem: String) -> void:
	if problem != "":
		result["errors"].append(problem)
	MotionVAETestArgs.write_json(out_path, result)
	quit(0 if problem == "" else 1)
