@tool
extends EditorPlugin
## Registers the project settings that MotionVAEClient nodes fall back to when their own url/token are empty.

const SETTINGS := {
	MotionVAEClient.URL_SETTING: MotionVAEClient.DEFAULT_URL,
	MotionVAEClient.TOKEN_SETTING: "",
}


func _enter_tree() -> void:
	for setting: String in SETTINGS:
		if not ProjectSettings.has_setting(setting):
			ProjectSettings.set_setting(setting, SETTINGS[setting])
		ProjectSettings.set_initial_value(setting, SETTINGS[setting])
		ProjectSettings.add_property_info({"name": setting, "type": TYPE_STRING})
		ProjectSettings.set_as_basic(setting, true)
	print("Motion VAE bridge: addon enabled (protocol %d)" % MotionVAEProtocol.PROTOCOL_VERSION)
