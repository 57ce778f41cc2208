extends SceneTree
## Sends every MotionVAEClient request to a realtime server and records the reply each one got, plus
## what MotionVAEInput.stick_to_control makes of a few sticks, for tests/test_godot_e2e.py.
## Args after "--": --url URL --out res://requests.json

var client := MotionVAEClient.new()
var replies := {}  # seq -> reply or error
var calls := []  # [name, seq] in the order sent
var out_path := ""


func _initialize() -> void:
	var args := MotionVAETestArgs.parse()
	out_path = args["out"]
	client.url = args["url"]
	client.reconnect = false
	client.spawn_on_connect = 0
	client.connected.connect(_on_connected)
	client.reply_received.connect(func(reply: Dictionary) -> void: replies[int(reply.get("seq", -1))] = reply)
	root.add_child(client)
	create_timer(30.0).timeout.connect(_finish)


func _on_connected(_hello: Dictionary) -> void:
	_send("spawn", client.spawn(2, 0))
	_send("send_joystick", client.send_joystick(Vector2(0.6, -0.8), 1.4, [0]))
	_send("send_target", client.send_target(Vector3(3.0, 0.5, -4.0)))
	_send("release_control", client.release_control([1]))
	_send("reset_characters", client.reset_characters([0, 1], 1))
	_send("set_random_seed", client.set_random_seed(42))
	_send("pause", client.pause(true))
	_send("resume", client.pause(false))
	_send("step", client.step())
	_send("request_stats", client.request_stats())
	_send("despawn", client.despawn([1.0]))


func _send(name: String, seq: int) -> void:
	calls.append([name, seq])


func _process(_delta: float) -> bool:
	if not calls.is_empty() and replies.size() >= calls.size():
		_finish()
	return false


func _finish() -> void:
	var result := {"calls": calls, "replies": replies, "sticks": []}
	var turned := Basis(Vector3.UP, PI / 2)  # a camera looking along -X
	for case: Array in [[Vector2(0, -1), Basis.IDENTITY], [Vector2(1, 0), Basis.IDENTITY],
			[Vector2(0, -0.5), turned], [Vector2.ZERO, Basis.IDENTITY]]:
		var command := MotionVAEInput.stick_to_control(case[0], case[1], 2.0)
		result["sticks"].append([command["direction"].x, command["direction"].y, command["speed"]])
	MotionVAETestArgs.write_json(out_path, result)
	quit()
