import numpy as np
import pytest

from runtime import rotations as R


def random_quats(n, seed=0):
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return R.quat_normalize(q)


def same_rotation(a, b):
    return np.minimum(np.abs(a - b).max(-1), np.abs(a + b).max(-1))


def test_matrix_quat_round_trip():
    q = random_quats(2000)
    back = R.matrix_to_quat(R.quat_to_matrix(q))
    assert same_rotation(q, back).max() < 1e-10
    assert np.all(back[:, 3] >= 0)


def test_quat_mul_matches_matrices():
    a, b = random_quats(500, 1), random_quats(500, 2)
    m = R.quat_to_matrix(R.quat_mul(a, b))
    assert np.allclose(m, R.quat_to_matrix(a) @ R.quat_to_matrix(b), atol=1e-12)
    v = np.random.default_rng(3).normal(size=(500, 3))
    assert np.allclose(R.quat_rotate(a, v), np.einsum("nij,nj->ni", R.quat_to_matrix(a), v), atol=1e-12)


@pytest.mark.parametrize("order", ["XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX"])
def test_euler_round_trip_every_order(order):
    rng = np.random.default_rng(4)
    ang = rng.uniform(-np.pi, np.pi, (3000, 3))
    ang[:, 1] = rng.uniform(-np.pi / 2, np.pi / 2, 3000)
    ang[:5, 1] = [np.pi / 2, -np.pi / 2, np.pi / 2 - 1e-9, 0.0, 1.0]  # gimbal lock included
    m = R.euler_to_matrix(ang, order)
    back = R.euler_to_matrix(R.matrix_to_euler(m, order), order)
    assert np.abs(m - back).max() < 1e-8


def test_euler_order_matches_axis_products():
    a, b, c = 0.3, -0.7, 1.1
    m = R.euler_to_matrix(np.array([a, b, c]), "ZXY")
    assert np.allclose(m, R.axis_matrix(2, a) @ R.axis_matrix(0, b) @ R.axis_matrix(1, c))


def test_sixd_round_trip_and_gram_schmidt():
    q = random_quats(1000, 5)
    m = R.quat_to_matrix(q)
    d = R.matrix_to_sixd(m)
    assert np.allclose(R.sixd_to_matrix(d), m, atol=1e-12)
    noisy = R.sixd_to_matrix(d * 3.0 + np.random.default_rng(6).normal(0, 0.05, d.shape))
    assert np.allclose(noisy @ np.swapaxes(noisy, -1, -2), np.eye(3), atol=1e-10)
    assert np.allclose(np.linalg.det(noisy), 1.0)


def test_slerp_endpoints_and_midpoint():
    a, b = random_quats(100, 7), random_quats(100, 8)
    assert same_rotation(R.quat_slerp(a, b, 0.0), a).max() < 1e-12
    assert same_rotation(R.quat_slerp(a, b, 1.0), b).max() < 1e-12
    mid = R.quat_slerp(a, b, 0.5)
    # The midpoint is equally far (in angle) from both ends.
    da = np.abs(np.sum(mid * a, -1))
    db = np.abs(np.sum(mid * b, -1))
    assert np.allclose(da, db, atol=1e-9)


def test_continuity_flips_signs():
    q = random_quats(1, 9).repeat(50, 0)
    q[1::2] *= -1
    fixed = R.quat_continuous(q)
    assert np.all(np.sum(fixed[1:] * fixed[:-1], -1) > 0)


def test_yaw_faces_plus_z_at_zero():
    assert np.allclose(R.yaw_matrix(np.pi / 2) @ [0, 0, 1], [1, 0, 0])
    assert np.allclose(R.quat_to_matrix(R.yaw_quat(0.4)), R.yaw_matrix(0.4))
