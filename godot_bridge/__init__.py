"""The websocket server that streams a model's characters to Godot 4 (needs the [bridge] extra) and its addon."""
from runtime.cli import exit_when_missing

exit_when_missing("godot_bridge", "websockets")
