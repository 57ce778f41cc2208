class_name MotionVAESkeletonModifier
extends SkeletonModifier3D
## Poses its parent Skeleton3D with the newest frame of one character of a MotionVAEClient.
##
## Runs in Godot's modifier pass (after AnimationPlayer), so it can layer over other animation and
## blend through influence. Bones are matched by name, or through bone_map, with rest-pose
## compensation (see MotionVAERetarget), so rigs whose rest pose differs from the model's work too.

## The client whose frames drive this skeleton.
@export var client: MotionVAEClient
## Which of the client's characters (an id from MotionVAEClient.character_ids).
@export var character_id := 0
## Model bone name -> this skeleton's bone name; bones not listed are matched by their own name.
@export var bone_map: Dictionary = {}
## Keep the root bone over the skeleton's origin (only its height moves): for game code that moves
## the character body itself.
@export var in_place := false
## Model metres -> skeleton units (100 for a rig modelled in centimetres).
@export var position_scale := 1.0

var applied_frame := -1  ## frame number of the pose applied last (-1: none yet)
var _retarget := MotionVAERetarget.new()
var _warned := ""


func _process_modification() -> void:
	var skeleton := get_skeleton()
	if client == null or client.latest_frame == null or skeleton == null:
		return
	var frame := client.latest_frame
	var index := frame.index_of(character_id)
	if index < 0:
		return
	if not _retarget.matches(skeleton, client.bone_names, bone_map):
		var problem := _retarget.setup(skeleton, client.bone_names, bone_map)
		if problem != "":
			if problem != _warned:
				push_warning("MotionVAESkeletonModifier: " + problem)
				_warned = problem
			return
	_retarget.apply(skeleton, frame, index, position_scale, in_place)
	applied_frame = frame.frame
