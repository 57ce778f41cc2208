class_name MotionVAEInput
extends Node
## Turns the ui_left/ui_right/ui_up/ui_down actions or a gamepad's left stick into joystick controls.
##
## "Up" means away from the camera when one is set, else world -Z (Godot's forward). The command is
## sent when it changes, and at most every send_interval seconds.

const STILL_DIRECTION := Vector2(0.0, -1.0)  # any unit vector: the protocol refuses [0, 0]

@export var client: MotionVAEClient
## Directions are relative to this camera's view, flattened onto the ground; none: world axes.
@export var camera: Camera3D
## Character ids to steer; empty: all of the client's characters.
@export var character_ids: Array[int] = []
@export var walk_speed := 1.4
@export var run_speed := 3.2
## Held, this action makes the character run (leave empty to always walk).
@export var run_action := ""
@export var joypad_device := 0
@export_range(0.0, 1.0) var deadzone := 0.2
@export var send_interval := 0.1

# Starts as "standing still", so nothing is sent until the player first touches the controls.
var _last_sent := {"direction": STILL_DIRECTION, "speed": 0.0}
var _since_send := 0.0


## Stick (x right, y down, length <= 1) in camera_basis's view -> {"direction": Vector2(x, z), "speed": m/s}.
static func stick_to_control(stick: Vector2, camera_basis: Basis, top_speed: float) -> Dictionary:
	var forward := -camera_basis.z
	var right := camera_basis.x
	forward.y = 0.0
	right.y = 0.0
	# A camera looking straight down has no horizontal forward: its up vector is the forward then.
	if forward.length_squared() < 1e-6:
		forward = camera_basis.y
		forward.y = 0.0
	var world := right.normalized() * stick.x - forward.normalized() * stick.y
	var amount := minf(stick.length(), 1.0)
	if world.length_squared() < 1e-8:
		return {"direction": STILL_DIRECTION, "speed": 0.0}
	var flat := Vector2(world.x, world.z).normalized()
	return {"direction": flat, "speed": amount * top_speed}


## The current stick: the ui_* actions, or the gamepad's left stick when it is pushed further.
func read_stick() -> Vector2:
	var keys := Input.get_vector("ui_left", "ui_right", "ui_up", "ui_down")
	var pad := Vector2(Input.get_joy_axis(joypad_device, JOY_AXIS_LEFT_X),
			Input.get_joy_axis(joypad_device, JOY_AXIS_LEFT_Y))
	if pad.length() < deadzone:
		pad = Vector2.ZERO
	return pad if pad.length() > keys.length() else keys


func _process(delta: float) -> void:
	_since_send += delta
	if client == null or not client.is_open() or _since_send < send_interval:
		return
	var running := run_action != "" and InputMap.has_action(run_action) and Input.is_action_pressed(run_action)
	var view := camera.global_transform.basis if camera != null else Basis.IDENTITY
	var command := stick_to_control(read_stick(), view, run_speed if running else walk_speed)
	if command == _last_sent:
		return
	client.send_joystick(command["direction"], command["speed"], character_ids)
	_last_sent = command
	_since_send = 0.0
