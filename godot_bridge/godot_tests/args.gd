class_name MotionVAETestArgs
extends RefCounted
## Parses "--key value" pairs given after "--" on the Godot command line (test drivers only).


static func parse() -> Dictionary:
	var args := OS.get_cmdline_user_args()
	var out := {}
	for i in range(0, args.size() - 1, 2):
		out[args[i].trim_prefix("--")] = args[i + 1]
	return out


## Writes data as JSON to path (a res:// path inside the test project, visible to the test on the host).
static func write_json(path: String, data: Variant) -> void:
	var file := FileAccess.open(path, FileAccess.WRITE)
	file.store_string(JSON.stringify(data))
	file.close()
