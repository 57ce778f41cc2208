class_name MotionVAEProtocol
extends RefCounted
## Protocol version 1 of the Motion VAE bridge: wire constants and codecs.
##
## godot_bridge/PROTOCOL.md is the specification; tests check these constants against its tables.
## Binary frames are little-endian, which is the byte order of every platform Godot 4 runs on, so
## PackedByteArray.to_float32_array() reads their floats directly.

const PROTOCOL_VERSION := 1
const MAGIC := "MVAE"

const HEADER_SIZE := 20
const HEADER_OFFSET_MAGIC := 0
const HEADER_OFFSET_VERSION := 4
const HEADER_OFFSET_FLAGS := 6
const HEADER_OFFSET_FRAME := 8
const HEADER_OFFSET_ACK := 12
const HEADER_OFFSET_CHARACTERS := 16
const HEADER_OFFSET_BONES := 18

const RECORD_BASE_SIZE := 36
const RECORD_OFFSET_ID := 0
const RECORD_OFFSET_FLAGS := 4
const RECORD_OFFSET_ROOT_POSITION := 8
const RECORD_OFFSET_ROOT_ROTATION := 20
const RECORD_OFFSET_LOCAL_ROTATIONS := 36
const BONE_SIZE := 16

const FRAME_FLAG_STEP := 1
const CHARACTER_FLAG_RESET := 1


## A client message as JSON text; seq < 0 leaves the seq field out.
static func encode_message(type: String, fields: Dictionary = {}, seq: int = -1) -> String:
	var message := fields.duplicate()
	message["type"] = type
	if seq >= 0:
		message["seq"] = seq
	return JSON.stringify(message)


## Decodes a binary frame; the result's error is non-empty when the bytes are not a valid frame.
static func decode_frame(data: PackedByteArray, expected_bones: int = -1) -> MotionVAEFrame:
	var frame := MotionVAEFrame.new()
	if data.size() < HEADER_SIZE:
		frame.error = "frame of %d bytes is shorter than its %d-byte header" % [data.size(), HEADER_SIZE]
		return frame
	if data.slice(HEADER_OFFSET_MAGIC, HEADER_OFFSET_MAGIC + 4).get_string_from_ascii() != MAGIC:
		frame.error = "byte 0: wrong magic"
		return frame
	var version := data.decode_u16(HEADER_OFFSET_VERSION)
	if version != PROTOCOL_VERSION:
		frame.error = "byte 4: protocol version %d, expected %d" % [version, PROTOCOL_VERSION]
		return frame
	var count := data.decode_u16(HEADER_OFFSET_CHARACTERS)
	var bones := data.decode_u16(HEADER_OFFSET_BONES)
	if expected_bones >= 0 and bones != expected_bones:
		frame.error = "byte 18: %d bones, the handshake's skeleton has %d" % [bones, expected_bones]
		return frame
	var record := RECORD_BASE_SIZE + BONE_SIZE * bones
	if data.size() != HEADER_SIZE + count * record:
		frame.error = "frame of %d characters x %d bones must be %d bytes, got %d" % [
				count, bones, HEADER_SIZE + count * record, data.size()]
		return frame
	frame.frame = data.decode_u32(HEADER_OFFSET_FRAME)
	frame.ack = data.decode_u32(HEADER_OFFSET_ACK)
	frame.flags = data.decode_u16(HEADER_OFFSET_FLAGS)
	frame.bone_count = bones
	frame.stride = record >> 2  # float32 words
	frame.ids.resize(count)
	frame.character_flags.resize(count)
	for i in count:
		var at := HEADER_SIZE + i * record
		frame.ids[i] = data.decode_u32(at + RECORD_OFFSET_ID)
		frame.character_flags[i] = data.decode_u32(at + RECORD_OFFSET_FLAGS)
	frame.values = data.slice(HEADER_SIZE).to_float32_array()
	return frame
