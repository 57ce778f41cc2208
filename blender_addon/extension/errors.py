"""The extension's one exception family: user mistakes that operators turn into a report, never a traceback."""


class AddonError(Exception):
    """Bad input from the user (no armature, a broken bone map, a bad setting); the message says what to do."""
