class_name MotionVAEBaker
extends Node
## Records frames of one character into an Animation inside an AnimationLibrary saved with ResourceSaver.
##
## Binds the skeleton like MotionVAESkeletonModifier: with match_rig (the default) start() sends the skeleton in a
## bind message, and recording begins with the first frame the server computed for that rig, so the tracks carry
## the matched bones, rest alignment, root motion scaled to the rig's hip height and the legs turned to keep the
## model's footprints. Without match_rig, bones are matched by name or through bone_map. One rotation track per
## mapped bone and a position track for the root; keys sit at the frames' own times, so frames a realtime
## server dropped leave no hitch. The server keeps one rig per connection: bake on a client that drives no
## other rig while recording.

## Emitted once the library is saved (err is OK) or failed to save.
signal baked(path: String, err: Error)

@export var client: MotionVAEClient
## The skeleton the animation is made for: its bone names and rest pose.
@export var skeleton: Skeleton3D
@export var character_id := 0
## Model bone name -> skeleton bone name; bones not listed are matched by their own name (or by the server).
@export var bone_map: Dictionary = {}
## Ask the server to match this skeleton to the model (see above).
@export var match_rig := true
## A BoneMap whose profile (SkeletonProfileHumanoid) names this skeleton's bones, as in
## MotionVAESkeletonModifier.
@export var humanoid_bone_map: BoneMap
@export_range(1, 100000) var frame_count := 300
@export var animation_name := "motion_vae"
## Where to save the AnimationLibrary (.tres for text, .res for binary).
@export_file("*.tres", "*.res") var output_path := "res://motion_vae_library.tres"
## Track paths are "<this>:<bone>"; empty uses the skeleton's node name (an AnimationPlayer beside it).
@export var skeleton_path := NodePath("")
## Extra factor on the root motion: without match_rig, model metres -> skeleton units; with it leave it at 1.
@export var position_scale := 1.0

var bind_reply: Dictionary = {}  ## the server's reply to this skeleton's bind (empty until it arrives)
var first_frame := -1  ## the server frame number of the first recorded frame (-1: none yet)
var _recording := false
var _retarget := MotionVAERetarget.new()
var _bind_seq := -1
var _times := PackedFloat32Array()
var _rotations: Array[Quaternion] = []  # frame-major: frame * bones + bone
var _positions := PackedVector3Array()


## Starts recording the next frame_count frames (with match_rig, once the bind is answered); fails when client,
## skeleton or bones are missing.
func start() -> Error:
	if client == null or skeleton == null or client.bone_names.is_empty() or not client.is_open():
		push_error("MotionVAEBaker: set client and skeleton, and start once the client is connected")
		return ERR_UNCONFIGURED
	bind_reply = {}
	_bind_seq = -1
	if match_rig:
		_bind_seq = client.bind_rig(skeleton, MotionVAERetarget.bind_names(skeleton, humanoid_bone_map), bone_map)
	else:
		var problem := _retarget.setup(skeleton, client.bone_names, bone_map)
		if problem != "":
			push_error("MotionVAEBaker: " + problem)
			return ERR_INVALID_DATA
	first_frame = -1
	_times.clear()
	_rotations.clear()
	_positions.clear()
	if not client.frame_received.is_connected(_on_frame):
		client.frame_received.connect(_on_frame)
	_recording = true
	return OK


## Whether frames are being recorded.
func is_recording() -> bool:
	return _recording


func _on_frame(frame: MotionVAEFrame) -> void:
	var index := frame.index_of(character_id)
	if not _recording or index < 0 or (_bind_seq >= 0 and not _bound(frame)):
		return
	if first_frame < 0:
		first_frame = frame.frame
	_times.append((frame.frame - first_frame) / float(client.hello.get("fps", 30.0)))
	if _retarget.bound:
		_retarget.world_rotations(frame, index)
	for i in _retarget.targets.size():
		_rotations.append(_retarget.bone_rotation(frame, index, i))
	_positions.append(_retarget.root_position(frame, index, position_scale))
	if _times.size() >= frame_count:
		_recording = false
		client.frame_received.disconnect(_on_frame)
		var err := save()
		baked.emit(output_path, err)


## Whether frame was computed for this baker's bound rig; takes the bind reply when it has arrived.
func _bound(frame: MotionVAEFrame) -> bool:
	if bind_reply.is_empty():
		var reply: Dictionary = client.bindings.get(_bind_seq, {})
		if reply.is_empty():
			return false
		bind_reply = reply
		var problem := "the server could not match %s: %s" % [skeleton.name, str(reply.get("message", ""))]
		if reply.get("type") == "ok":
			problem = _retarget.setup_bound(skeleton, client.bone_names, client.hello["skeleton"]["parents"], reply)
		if problem != "":
			push_error("MotionVAEBaker: " + problem)
			_recording = false
			client.frame_received.disconnect(_on_frame)
			baked.emit(output_path, ERR_INVALID_DATA)
			return false
	return frame.ack >= _bind_seq


## Builds the Animation from the recorded frames.
func build_animation() -> Animation:
	var anim := Animation.new()
	var fps := float(client.hello.get("fps", 30.0))
	anim.length = (_times[_times.size() - 1] if not _times.is_empty() else 0.0) + 1.0 / fps
	anim.step = 1.0 / fps
	var prefix := str(skeleton_path) if not skeleton_path.is_empty() else str(skeleton.name)
	var bones := _retarget.targets.size()
	var root := _retarget.targets[0]
	var track := anim.add_track(Animation.TYPE_POSITION_3D)
	anim.track_set_path(track, "%s:%s" % [prefix, skeleton.get_bone_name(root)])
	for k in _times.size():
		anim.position_track_insert_key(track, _times[k], _positions[k])
	for i in bones:
		if _retarget.targets[i] < 0:
			continue
		track = anim.add_track(Animation.TYPE_ROTATION_3D)
		anim.track_set_path(track, "%s:%s" % [prefix, skeleton.get_bone_name(_retarget.targets[i])])
		for k in _times.size():
			anim.rotation_track_insert_key(track, _times[k], _rotations[k * bones + i])
	return anim


## Saves the recorded frames as animation_name in an AnimationLibrary at output_path.
func save() -> Error:
	var library := AnimationLibrary.new()
	library.add_animation(animation_name, build_animation())
	var err := ResourceSaver.save(library, output_path)
	if err != OK:
		push_error("MotionVAEBaker: cannot save %s (%s)" % [output_path, error_string(err)])
	return err
