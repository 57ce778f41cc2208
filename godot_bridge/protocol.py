"""The bridge's wire format, protocol version 1 (PROTOCOL.md), as defined in runtime/protocol.py.

The definition lives in runtime because the Blender add-on reads the same frames (docs/design.md: code that two
front ends need belongs in runtime); this module keeps the bridge's own name for it.
"""
from runtime.protocol import *  # noqa: F401,F403
