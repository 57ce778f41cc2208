"""The model <-> Blender boundary: Y-up to Z-up and (x, y, z, w) to (w, x, y, z). Nothing else converts."""
from __future__ import annotations

import numpy as np

# (x, y, z) -> (x, -z, y): a quarter turn about X, so the model's up (+Y) becomes Blender's up (+Z) and the
# character's forward (+Z) becomes -Y, the direction Blender's front view looks back along.
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def positions_to_blender(p: np.ndarray) -> np.ndarray:
    """Model-space points (..., 3) -> Blender space."""
    return np.asarray(p, dtype=np.float64) @ Y_UP_TO_Z_UP.T


def positions_to_model(p: np.ndarray) -> np.ndarray:
    """Blender-space points (..., 3) -> model space (the inverse of positions_to_blender)."""
    return np.asarray(p, dtype=np.float64) @ Y_UP_TO_Z_UP


def ground_to_model(p: np.ndarray) -> np.ndarray:
    """Blender-space points or directions (..., 3) -> the model's ground coordinates (x, z), height dropped."""
    return positions_to_model(p)[..., [0, 2]]


def rotations_to_blender(m: np.ndarray) -> np.ndarray:
    """Model-space rotation matrices (..., 3, 3) -> the same rotations expressed in Blender space."""
    return Y_UP_TO_Z_UP @ np.asarray(m, dtype=np.float64) @ Y_UP_TO_Z_UP.T


def wxyz(q: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) stored (x, y, z, w) -> Blender's (w, x, y, z) order."""
    return np.roll(np.asarray(q), 1, axis=-1)
