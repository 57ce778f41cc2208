extends SceneTree
## Reloads a baked AnimationLibrary from disk and reports its animations and tracks as JSON.
## Args after "--": --library res://baked.tres --out res://reloaded.json


func _initialize() -> void:
	var args := MotionVAETestArgs.parse()
	var library := ResourceLoader.load(args["library"], "", ResourceLoader.CACHE_MODE_IGNORE) as AnimationLibrary
	var report := {"animations": {}}
	if library == null:
		report["error"] = "cannot load " + args["library"]
	else:
		for animation_name in library.get_animation_list():
			var anim := library.get_animation(animation_name)
			var tracks := []
			for t in anim.get_track_count():
				var keys := []
				for k in anim.track_get_key_count(t):
					var v: Variant = anim.track_get_key_value(t, k)
					var values: Array = [v.x, v.y, v.z, v.w] if v is Quaternion else [v.x, v.y, v.z]
					keys.append([anim.track_get_key_time(t, k), values])
				tracks.append({"type": anim.track_get_type(t), "path": str(anim.track_get_path(t)), "keys": keys})
			report["animations"][str(animation_name)] = {"length": anim.length, "tracks": tracks}
	report["rotation_type"] = Animation.TYPE_ROTATION_3D
	report["position_type"] = Animation.TYPE_POSITION_3D
	MotionVAETestArgs.write_json(args["out"], report)
	quit()
