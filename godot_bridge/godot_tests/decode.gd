extends SceneTree
## Decodes frames with the addon's MotionVAEProtocol and reports them as JSON, so a test can compare
## GDScript's reading of the byte layout with protocol.py's.
## Args after "--": --in res://frames.json (a list of {"base64": ..., "bones": n}) --out res://decoded.json


func _initialize() -> void:
	var args := MotionVAETestArgs.parse()
	var cases: Array = JSON.parse_string(FileAccess.get_file_as_string(args["in"]))
	var out := []
	for case: Dictionary in cases:
		var frame := MotionVAEProtocol.decode_frame(Marshalls.base64_to_raw(case["base64"]), int(case["bones"]))
		var row := {"error": frame.error}
		if frame.error == "":
			var characters := []
			for i in frame.character_count():
				var locals := []
				for b in frame.bone_count:
					var q := frame.local_rotation(i, b)
					locals.append([q.x, q.y, q.z, q.w])
				var p := frame.root_position(i)
				var r := frame.root_rotation(i)
				characters.append({"id": frame.ids[i], "reset": frame.is_reset(i), "root_position": [p.x, p.y, p.z],
						"root_rotation": [r.x, r.y, r.z, r.w], "local_rotations": locals})
			row.merge({"frame": frame.frame, "ack": frame.ack, "flags": frame.flags, "characters": characters})
		out.append(row)
	MotionVAETestArgs.write_json(args["out"], out)
	quit()
