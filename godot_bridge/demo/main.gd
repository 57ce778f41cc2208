extends Node3D
## Motion VAE demo: one character streamed from the bridge server onto Godot's humanoid reference
## skeleton (SkeletonProfileHumanoid: other names, proportions and rest pose than the model's), which the
## modifier has the server match (bind), with the root motion and legs scaled to it.
##
## Arrow keys (or a gamepad's left stick) steer, Shift runs, R resets, P pauses. Steering needs a model
## with a joystick policy; without one the server answers no_policy and the character walks freely.
## Command line, after "--": --url ws://HOST:PORT/ and --frames N (print a summary and quit after N
## frames, for smoke tests).

const BONE_RADIUS := 0.03
const CAMERA_OFFSET := Vector3(0.0, 1.8, -4.5)  # behind the character, which starts facing +Z

var client := MotionVAEClient.new()
var skeleton := Skeleton3D.new()
var modifier := MotionVAESkeletonModifier.new()
var steering := MotionVAEInput.new()
var camera := Camera3D.new()
var status := Label.new()
var quit_after := -1
var frames := 0
var paused := false


func _ready() -> void:
	var args := _user_args()
	client.url = args.get("url", "")
	quit_after = int(args.get("frames", "-1"))
	_add_key_action("motion_vae_run", KEY_SHIFT)
	_add_key_action("motion_vae_reset", KEY_R)
	_add_key_action("motion_vae_pause", KEY_P)
	_build_world()
	client.connected.connect(_on_connected)
	client.disconnected.connect(func(code: int, _reason: String) -> void: status.text = "disconnected (%d), retrying..." % code)
	client.error.connect(_on_error)
	client.frame_received.connect(_on_frame)
	add_child(client)
	skeleton.name = "Character"
	add_child(skeleton)
	modifier.client = client
	skeleton.add_child(modifier)
	steering.client = client
	steering.camera = camera
	steering.run_action = "motion_vae_run"
	add_child(steering)
	status.text = "connecting to the server (python -m godot_bridge.serve) ..."


func _user_args() -> Dictionary:
	var args := OS.get_cmdline_user_args()
	var out := {}
	for i in range(0, args.size() - 1, 2):
		out[args[i].trim_prefix("--")] = args[i + 1]
	return out


func _add_key_action(action: String, key: Key) -> void:
	if InputMap.has_action(action):
		return
	InputMap.add_action(action)
	var event := InputEventKey.new()
	event.physical_keycode = key
	InputMap.action_add_event(action, event)


func _build_world() -> void:
	var light := DirectionalLight3D.new()
	light.rotation_degrees = Vector3(-50.0, 30.0, 0.0)
	light.shadow_enabled = true
	add_child(light)
	var environment := WorldEnvironment.new()
	environment.environment = Environment.new()
	environment.environment.background_mode = Environment.BG_COLOR
	environment.environment.background_color = Color(0.55, 0.65, 0.75)
	environment.environment.ambient_light_source = Environment.AMBIENT_SOURCE_COLOR
	environment.environment.ambient_light_color = Color(0.5, 0.5, 0.55)
	add_child(environment)
	# A checkerboard floor, so walking shows against the ground.
	var floor_material := StandardMaterial3D.new()
	floor_material.albedo_texture = _checker_texture()
	floor_material.uv1_scale = Vector3(100.0, 100.0, 1.0)
	floor_material.texture_filter = BaseMaterial3D.TEXTURE_FILTER_NEAREST
	var ground := MeshInstance3D.new()
	var plane := PlaneMesh.new()
	plane.size = Vector2(200.0, 200.0)
	plane.material = floor_material
	ground.mesh = plane
	add_child(ground)
	camera.position = CAMERA_OFFSET
	add_child(camera)
	camera.look_at(Vector3(0.0, 1.0, 0.0))
	var hud := CanvasLayer.new()
	status.position = Vector2(12.0, 12.0)
	hud.add_child(status)
	var help := Label.new()
	help.text = "arrows: steer   shift: run   R: reset   P: pause"
	help.position = Vector2(12.0, 36.0)
	hud.add_child(help)
	add_child(hud)


func _checker_texture() -> ImageTexture:
	var image := Image.create(2, 2, false, Image.FORMAT_RGB8)
	image.fill(Color(0.78, 0.78, 0.74))
	image.set_pixel(0, 0, Color(0.62, 0.62, 0.6))
	image.set_pixel(1, 1, Color(0.62, 0.62, 0.6))
	return ImageTexture.create_from_image(image)


func _on_connected(hello: Dictionary) -> void:
	MotionVAESkeletonBuilder.build_humanoid(skeleton)
	_build_bone_meshes()
	status.text = "%s: %d bones at %s fps" % [hello["model"], client.bone_names.size(), hello["fps"]]
	print("demo: connected to %s (%d bones, %s fps)" % [hello["model"], client.bone_names.size(), hello["fps"]])


func _on_error(code: String, message: String) -> void:
	status.text = "%s: %s" % [code, message]
	print("demo: %s: %s" % [code, message])


## A sphere on every joint and a capsule from every joint to each child, riding on BoneAttachment3Ds.
func _build_bone_meshes() -> void:
	for child in skeleton.get_children():
		if child is BoneAttachment3D:
			child.queue_free()
	var material := StandardMaterial3D.new()
	material.albedo_color = Color(0.85, 0.45, 0.2)
	var attachments := []
	for i in skeleton.get_bone_count():
		var attachment := BoneAttachment3D.new()
		attachment.bone_name = skeleton.get_bone_name(i)
		skeleton.add_child(attachment)
		var joint := MeshInstance3D.new()
		var sphere := SphereMesh.new()
		sphere.radius = BONE_RADIUS * 1.4
		sphere.height = BONE_RADIUS * 2.8
		sphere.material = material
		joint.mesh = sphere
		attachment.add_child(joint)
		attachments.append(attachment)
	for i in skeleton.get_bone_count():
		var parent := skeleton.get_bone_parent(i)
		var offset := skeleton.get_bone_rest(i).origin
		if parent < 0 or offset.length() < 1e-4:
			continue
		var limb := MeshInstance3D.new()
		var capsule := CapsuleMesh.new()
		capsule.radius = BONE_RADIUS
		capsule.height = offset.length()
		capsule.material = material
		limb.mesh = capsule
		# Capsules stand along +Y; turn this one onto the parent -> child offset (in the parent's frame),
		# halfway along it.
		limb.transform = Transform3D(Basis(Quaternion(Vector3.UP, offset.normalized())), offset * 0.5)
		attachments[parent].add_child(limb)


func _on_frame(frame: MotionVAEFrame) -> void:
	frames += 1
	if quit_after > 0 and frames >= quit_after:
		var index := frame.index_of(modifier.character_id)
		var where := frame.root_position(index) if index >= 0 else Vector3.ZERO
		print("demo: %d frames received, character at %s, rig matched as %s" % [frames, where,
				modifier.bind_reply.get("preset", "(no reply yet)")])
		get_tree().quit()


func _process(delta: float) -> void:
	var frame := client.latest_frame
	if frame == null or frame.index_of(modifier.character_id) < 0:
		return
	var hips := skeleton.global_transform * frame.root_position(frame.index_of(modifier.character_id))
	var goal := Vector3(hips.x, 0.0, hips.z) + CAMERA_OFFSET
	camera.position = camera.position.lerp(goal, minf(1.0, 3.0 * delta))
	camera.look_at(Vector3(hips.x, 1.0, hips.z))


func _unhandled_input(event: InputEvent) -> void:
	if event.is_action_pressed("motion_vae_reset"):
		client.reset_characters()
	elif event.is_action_pressed("motion_vae_pause"):
		paused = not paused
		client.pause(paused)
