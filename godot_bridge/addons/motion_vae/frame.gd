class_name MotionVAEFrame
extends RefCounted
## One decoded binary frame: each character's root transform and local bone rotations (model space:
## metres, Y up, the character faces +Z; rotations relative to the parent bone, rest = identity).

var frame := 0  ## the server's frame number (gaps mean frames were dropped for this client)
var ack := 0  ## the highest message seq the server had applied when it computed this frame
var flags := 0  ## MotionVAEProtocol.FRAME_FLAG_* bits
var bone_count := 0
var ids := PackedInt64Array()  ## character ids, one per record
var character_flags := PackedInt64Array()  ## MotionVAEProtocol.CHARACTER_FLAG_* bits, one per record
var values := PackedFloat32Array()  ## every record as float32 words (the id and flags words are not floats)
var stride := 0  ## float32 words per record
var error := ""  ## non-empty when the bytes were not a valid frame

# Byte offsets inside a record, as float32 word offsets.
const _ROOT_POSITION_WORD := MotionVAEProtocol.RECORD_OFFSET_ROOT_POSITION >> 2
const _ROOT_ROTATION_WORD := MotionVAEProtocol.RECORD_OFFSET_ROOT_ROTATION >> 2
const _LOCAL_ROTATIONS_WORD := MotionVAEProtocol.RECORD_OFFSET_LOCAL_ROTATIONS >> 2


## Number of characters in this frame.
func character_count() -> int:
	return ids.size()


## The record index of a character id, or -1 when this frame does not carry it.
func index_of(id: int) -> int:
	return ids.find(id)


## Root (hips) position of record index.
func root_position(index: int) -> Vector3:
	var o := index * stride + _ROOT_POSITION_WORD
	return Vector3(values[o], values[o + 1], values[o + 2])


## Root (hips) world rotation of record index.
func root_rotation(index: int) -> Quaternion:
	return _quaternion(index * stride + _ROOT_ROTATION_WORD)


## Rotation of bone relative to its parent (bone 0: the root's world rotation) of record index.
func local_rotation(index: int, bone: int) -> Quaternion:
	return _quaternion(index * stride + _LOCAL_ROTATIONS_WORD + 4 * bone)


## Whether record index was (re)placed on a start frame this frame: do not blend from the previous pose.
func is_reset(index: int) -> bool:
	return (character_flags[index] & MotionVAEProtocol.CHARACTER_FLAG_RESET) != 0


func _quaternion(o: int) -> Quaternion:
	return Quaternion(values[o], values[o + 1], values[o + 2], values[o + 3])
