class_name MotionVAESkeletonModifier
extends SkeletonModifier3D
## Poses its parent Skeleton3D with the newest frame of one character of a MotionVAEClient.
##
## Runs in Godot's modifier pass (after AnimationPlayer), so it can layer over other animation and
## blend through influence. With match_rig (the default) the server matches the skeleton to the model
## (bind message: name presets for Mixamo, Rigify, Unreal, Godot's SkeletonProfileHumanoid and CMU, then
## the hierarchy and rest directions), aligns rest poses, scales the root motion to the rig's hip height
## and turns the legs so the feet keep the model's footprints; until its reply arrives, and without
## match_rig, bones are matched by name or through bone_map (see MotionVAERetarget).

## The client whose frames drive this skeleton.
@export var client: MotionVAEClient
## Which of the client's characters (an id from MotionVAEClient.character_ids).
@export var character_id := 0
## Model bone name -> this skeleton's bone name; bones not listed are matched by their own name.
@export var bone_map: Dictionary = {}
## Keep the root bone over the skeleton's origin (only its height moves): for game code that moves
## the character body itself.
@export var in_place := false
## Extra factor on the root motion: without match_rig, model metres -> skeleton units (100 for a rig
## modelled in centimetres); with it the rig's own scale is measured, so leave it at 1.
@export var position_scale := 1.0
## Ask the server to match this skeleton to the model (see above).
@export var match_rig := true
## A BoneMap whose profile (SkeletonProfileHumanoid) names this skeleton's bones: they are matched under
## their profile names (Hips, LeftUpperLeg, ...). Skeletons Godot's importer retargeted already carry them.
@export var humanoid_bone_map: BoneMap

var applied_frame := -1  ## frame number of the pose applied last (-1: none yet)
var bind_reply: Dictionary = {}  ## the server's reply to this skeleton's bind (empty until it arrives)
var _retarget := MotionVAERetarget.new()
var _warned := ""
var _bind_seq := -1
var _bind_key := []


func _process_modification() -> void:
	var skeleton := get_skeleton()
	if client == null or client.latest_frame == null or skeleton == null:
		return
	var frame := client.latest_frame
	var index := frame.index_of(character_id)
	if index < 0:
		return
	if match_rig:
		_bind(skeleton)
	if not _retarget.bound and not _retarget.matches(skeleton, client.bone_names, bone_map):
		var problem := _retarget.setup(skeleton, client.bone_names, bone_map)
		if problem != "":
			if not (match_rig and bind_reply.is_empty()):  # names are only a stopgap while the bind is answered
				_warn(problem)
			return
	_retarget.apply(skeleton, frame, index, position_scale, in_place)
	applied_frame = frame.frame


## Sends this skeleton's bind when it is new or changed (or the client reconnected), and takes the reply.
func _bind(skeleton: Skeleton3D) -> void:
	var key := [skeleton.get_version(), client.bone_names, bone_map.hash(), humanoid_bone_map]
	if key != _bind_key or not client.bindings.has(_bind_seq):
		_retarget.bound = false
		bind_reply = {}
		_bind_key = key
		_bind_seq = client.bind_rig(skeleton, MotionVAERetarget.bind_names(skeleton, humanoid_bone_map), bone_map)
		return
	var reply: Dictionary = client.bindings[_bind_seq]
	if reply.is_empty() or not bind_reply.is_empty():
		return
	bind_reply = reply
	if reply.get("type") != "ok":
		_warn("the server could not match %s: %s (bones are matched by name)" % [skeleton.name,
				str(reply.get("message", ""))])
		return
	var problem := _retarget.setup_bound(skeleton, client.bone_names, client.hello["skeleton"]["parents"], reply)
	if problem != "":
		_warn(problem)


func _warn(problem: String) -> void:
	if problem != _warned:
		push_warning("MotionVAESkeletonModifier: " + problem)
		_warned = problem
