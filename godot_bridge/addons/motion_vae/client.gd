class_name MotionVAEClient
extends Node
## Connects to a Motion VAE server (python -m godot_bridge.serve), keeps the connection up with
## backoff, spawns characters, sends controls and hands out the frames it receives.
##
## Every request method returns the seq it sent (compare with MotionVAEFrame.ack or the reply's seq),
## or -1 when not connected. Replies arrive through reply_received (refusals through error as well).

## The handshake was received: hello is the server's hello message (skeleton, fps, limits).
signal connected(hello: Dictionary)
## An open connection closed (the client reconnects by itself when reconnect is on).
signal disconnected(code: int, reason: String)
## The server refused a message, or the connection or a frame failed; code as in PROTOCOL.md.
signal error(code: String, message: String)
## A binary frame arrived (every one, in order); latest_frame holds the newest.
signal frame_received(frame: MotionVAEFrame)
## A reply to a request arrived: ok, stats or error; its seq is what the request method returned.
signal reply_received(reply: Dictionary)

const DEFAULT_URL := "ws://127.0.0.1:8765/"
const URL_SETTING := "motion_vae/connection/url"
const TOKEN_SETTING := "motion_vae/connection/token"
# Frames are one message each; this bounds one frame at 4 MiB (thousands of characters).
const INBOUND_BUFFER_BYTES := 1 << 22

## Server address; empty uses the project setting motion_vae/connection/url, then DEFAULT_URL.
@export var url := ""
## Shared secret for servers started with --token; empty uses the project setting motion_vae/connection/token.
@export var token := ""
## Connect when the node enters the tree.
@export var autoconnect := true
## Characters to spawn after every (re)connection.
@export_range(0, 256) var spawn_on_connect := 1
## Pin spawned characters' planted feet on the server (two-bone leg IK there); off streams the raw poses.
@export var foot_lock := true
## When >= 0, sent as the seed on every connection before spawning, for repeatable motion.
@export var random_seed := -1
## Reconnect after a lost or failed connection, waiting reconnect_min_delay, doubling up to reconnect_max_delay.
@export var reconnect := true
@export var reconnect_min_delay := 0.5
@export var reconnect_max_delay := 8.0

var hello: Dictionary = {}  ## the last handshake (empty until connected)
var bone_names := PackedStringArray()  ## the model's bone names, in frame order
var character_ids: Array[int] = []  ## ids of this client's spawned characters
var latest_frame: MotionVAEFrame  ## the newest frame received (null before the first)
var bindings := {}  ## bind replies (ok or error) by the seq bind_rig returned; cleared on every connection

var _peer: WebSocketPeer
var _open := false
var _wanted := false
var _seq := 0
var _delay := 0.0
var _retry_in := -1.0


func _ready() -> void:
	if autoconnect:
		connect_to_server()


func _exit_tree() -> void:
	if _peer != null:
		_peer.close(1001, "client leaves")
		_peer.poll()  # hands the close frame to the socket before the node goes


## Opens the connection (and keeps reopening it while reconnect is on).
func connect_to_server() -> void:
	_wanted = true
	_retry_in = -1.0
	_peer = WebSocketPeer.new()
	_peer.inbound_buffer_size = INBOUND_BUFFER_BYTES
	var target := _target_url()
	var err := _peer.connect_to_url(target)
	if err != OK:
		_peer = null
		error.emit("connection_failed", "cannot connect to %s (%s)" % [target, error_string(err)])
		_schedule_retry()


## Closes the connection and stops reconnecting.
func disconnect_from_server() -> void:
	_wanted = false
	_retry_in = -1.0
	if _peer != null:
		_peer.close(1000, "client disconnects")


## Whether the handshake has been received on an open connection.
func is_open() -> bool:
	return _open


func _target_url() -> String:
	var base := url if url != "" else str(ProjectSettings.get_setting(URL_SETTING, DEFAULT_URL))
	var secret := token if token != "" else str(ProjectSettings.get_setting(TOKEN_SETTING, ""))
	if secret == "":
		return base
	return base + ("&" if "?" in base else "?") + "token=" + secret.uri_encode()


func _schedule_retry() -> void:
	if not (reconnect and _wanted):
		return
	_delay = reconnect_min_delay if _delay <= 0.0 else minf(_delay * 2.0, reconnect_max_delay)
	_retry_in = _delay


func _process(delta: float) -> void:
	if _peer == null:
		if _retry_in >= 0.0:
			_retry_in -= delta
			if _retry_in < 0.0:
				connect_to_server()
		return
	_peer.poll()
	var state := _peer.get_ready_state()
	if state == WebSocketPeer.STATE_OPEN:
		while _peer != null and _peer.get_available_packet_count() > 0:
			var packet := _peer.get_packet()
			if _peer.was_string_packet():
				_on_text(packet.get_string_from_utf8())
			else:
				_on_binary(packet)
	elif state == WebSocketPeer.STATE_CLOSED:
		_on_closed()


func _on_text(text: String) -> void:
	var message: Variant = JSON.parse_string(text)
	if typeof(message) != TYPE_DICTIONARY:
		error.emit("bad_reply", "the server sent text that is not a JSON object")
		return
	match str(message.get("type", "")):
		"hello":
			_on_hello(message)
		"error":
			error.emit(str(message.get("code", "")), str(message.get("message", "")))
			if message.get("seq") != null and bindings.has(int(message["seq"])):
				bindings[int(message["seq"])] = message
			reply_received.emit(message)
		"ok":
			_track_characters(message)
			if str(message.get("request", "")) == "bind":
				bindings[int(message.get("seq", -1))] = message
			reply_received.emit(message)
		"stats":
			reply_received.emit(message)


func _on_hello(message: Dictionary) -> void:
	if int(message.get("protocol", -1)) != MotionVAEProtocol.PROTOCOL_VERSION:
		error.emit("protocol_mismatch", "server speaks protocol %s, this addon speaks %d" % [
				str(message.get("protocol")), MotionVAEProtocol.PROTOCOL_VERSION])
		disconnect_from_server()
		return
	hello = message
	bone_names = PackedStringArray(message["skeleton"]["names"])
	character_ids.clear()
	bindings.clear()
	_open = true
	_delay = 0.0
	if random_seed >= 0:
		set_random_seed(random_seed)
	if spawn_on_connect > 0:
		spawn(spawn_on_connect)
	connected.emit(hello)


func _track_characters(reply: Dictionary) -> void:
	var ids: Array = reply.get("ids", [])
	match str(reply.get("request", "")):
		"spawn":
			for id: Variant in ids:
				character_ids.append(int(id))
		"despawn":
			for id: Variant in ids:
				character_ids.erase(int(id))


func _on_binary(packet: PackedByteArray) -> void:
	var frame := MotionVAEProtocol.decode_frame(packet, bone_names.size())
	if frame.error != "":
		error.emit("bad_frame", frame.error)
		return
	latest_frame = frame
	frame_received.emit(frame)


func _on_closed() -> void:
	var code := _peer.get_close_code()
	var reason := _peer.get_close_reason()
	var was_open := _open
	_peer = null
	_open = false
	character_ids.clear()
	if was_open:
		disconnected.emit(code, reason)
	elif _wanted:
		error.emit("connection_failed", "could not connect to %s (close code %d)" % [_target_url(), code])
	_schedule_retry()


## Sends a client message (see PROTOCOL.md); returns its seq, or -1 when not connected.
func send_message(type: String, fields: Dictionary = {}) -> int:
	if not _open:
		return -1
	_seq += 1
	_peer.send_text(MotionVAEProtocol.encode_message(type, fields, _seq))
	return _seq


## Asks the server to match skeleton to the model (PROTOCOL.md "bind"): the rest heads of its bones, sent
## under names (one per bone: the names a BoneMap gives them, else their own), and bone_map's overrides
## (model joint -> bone name). The reply lands in bindings[seq] ({} until it arrives); returns seq or -1.
func bind_rig(skeleton: Skeleton3D, names: PackedStringArray, bone_map: Dictionary = {}) -> int:
	var parents := []
	var heads := []
	for i in skeleton.get_bone_count():
		parents.append(skeleton.get_bone_parent(i))
		var head := skeleton.get_bone_global_rest(i).origin
		heads.append([head.x, head.y, head.z])
	var fields := {"bones": Array(names), "parents": parents, "heads": heads}
	if not bone_map.is_empty():
		fields["map"] = bone_map
	var seq := send_message("bind", fields)
	if seq >= 0:
		bindings[seq] = {}
	return seq


## Spawns count characters (on start frame start, or a random one when start < 0), foot locking as foot_lock.
func spawn(count: int = 1, start: int = -1) -> int:
	var fields := {"count": count, "foot_lock": foot_lock}
	if start >= 0:
		fields["start"] = start
	return send_message("spawn", fields)


## Removes characters (all of this client's when ids is empty).
func despawn(ids: Array = []) -> int:
	return send_message("despawn", _with_ids({}, ids))


## Puts characters back on a start frame (random when start < 0) where they spawned.
func reset_characters(ids: Array = [], start: int = -1) -> int:
	var fields := {}
	if start >= 0:
		fields["start"] = start
	return send_message("reset", _with_ids(fields, ids))


## Steers characters: walk along direction (world x, z) at speed metres per second.
func send_joystick(direction: Vector2, speed: float, ids: Array = []) -> int:
	var fields := {"task": "joystick", "direction": [direction.x, direction.y], "speed": speed}
	return send_message("control", _with_ids(fields, ids))


## Sends characters towards a point on the ground (its y is ignored).
func send_target(point: Vector3, ids: Array = []) -> int:
	return send_message("control", _with_ids({"task": "target", "target": [point.x, point.z]}, ids))


## Sends characters along a polyline of ground points (their y is ignored); closed loops back to the first.
func send_path(points: Array, closed: bool = false, ids: Array = []) -> int:
	var xz := []
	for p in points:
		xz.append([p.x, p.z])
	return send_message("control", _with_ids({"task": "path", "path": xz, "closed": closed}, ids))


## Lets characters walk freely again.
func release_control(ids: Array = []) -> int:
	return send_message("control", _with_ids({"task": "none"}, ids))


## Freezes (true) or resumes (false) this client's characters.
func pause(paused: bool) -> int:
	return send_message("pause", {"paused": paused})


## Restarts this client's latent random stream from value.
func set_random_seed(value: int) -> int:
	return send_message("seed", {"seed": value})


## Lockstep servers: asks for the next frame.
func step() -> int:
	return send_message("step")


## Asks for the server's counters (answered through reply_received).
func request_stats() -> int:
	return send_message("stats")


func _with_ids(fields: Dictionary, ids: Array) -> Dictionary:
	if not ids.is_empty():
		fields["ids"] = ids.map(func(id: Variant) -> int: return int(id))
	return fields
