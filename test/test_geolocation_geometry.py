"""Synthetic geometry: known camera pose + ground point -> pixel -> back-projection.

Tolerances: 1e-6 m without distortion (pure floating point), 1 mm with distortion at 40-60 m
altitude (OpenCV's iterative undistortion, run to convergence), 1e-6 rad for bearings.
"""
import math

import numpy as np
import pytest

from evit_perception.geolocation.bearings import azimuth_elevation, bearing_matrix, box_bearings
from evit_perception.geolocation.camera_model import CameraModel, CameraModelError
from evit_perception.geolocation.frames import (
    CameraMount, RigidTransform, enu_flu_to_ned_frd_rotation, enu_to_ned_position, matrix_to_quaternion,
    ned_frd_to_enu_flu_rotation, quaternion_slerp, quaternion_to_matrix, rpy_to_matrix)
from evit_perception.geolocation.ground_projection import (
    ABOVE_HORIZON, BEYOND_MAX_RANGE, CAMERA_BELOW_GROUND, agl_from_range, ground_contact_pixels,
    horizontal_covariance, project_pixels_to_ground)

K = np.array([[900.0, 0.0, 640.0], [0.0, 910.0, 360.0], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 1280, 720
CAMERAS = {
    "pinhole": CameraModel(K, [], "plumb_bob"),
    "plumb_bob": CameraModel(K, [-0.28, 0.09, 0.0008, -0.0011, -0.012], "plumb_bob"),
    "rational_polynomial": CameraModel(K, [-0.3, 0.1, 0.001, -0.001, -0.02, 0.01, 0.02, 0.004],
                                       "rational_polynomial"),
    "equidistant": CameraModel(K, [0.08, -0.03, 0.008, -0.001], "equidistant"),
}
MOUNTS = {
    "nadir": CameraMount(),
    "oblique_45": CameraMount((0.12, 0.0, -0.08), (0.0, math.radians(45.0), 0.0)),
    "oblique_yawed": CameraMount((0.05, 0.03, -0.1), (math.radians(3.0), math.radians(30.0), math.radians(-20.0))),
}


def drone_pose(x=12.0, y=-7.0, z=48.0, roll=0.04, pitch=-0.06, yaw=0.7) -> RigidTransform:
    return RigidTransform(rpy_to_matrix(roll, pitch, yaw), np.array([x, y, z]))


def visible_ground_points(camera, world_from_optical, ground_z, rng, n=40):
    """Ground points spread around the view that land inside the image, and their pixels."""
    look = world_from_optical.rotation[:, 2]
    origin = world_from_optical.translation
    centre = origin + look * (origin[2] - ground_z) / -look[2]
    points = centre + np.c_[rng.uniform(-60, 60, (400, 2)), np.zeros(400)]
    points[:, 2] = ground_z
    optical = world_from_optical.inverse().apply(points)
    # Only points the lens really images: inside the undistorted field of view. (A strong
    # polynomial model folds: points far outside the view would also project into the image.)
    ahead = optical[:, 2] > 1.0
    x, y = optical[:, 0] / optical[:, 2], optical[:, 1] / optical[:, 2]
    keep = ahead & (np.abs(x) < 0.6) & (np.abs(y) < 0.33)
    assert keep.sum() >= 10, "synthetic scene must show enough ground points"
    pixels = camera.project(optical[keep])
    assert ((pixels > 0) & (pixels < [WIDTH, HEIGHT])).all()
    return points[keep][:n], pixels[:n]


@pytest.mark.parametrize("mount_name", sorted(MOUNTS))
@pytest.mark.parametrize("camera_name", sorted(CAMERAS))
def test_pixel_back_projection_recovers_ground_point(camera_name, mount_name):
    camera, mount = CAMERAS[camera_name], MOUNTS[mount_name]
    world_from_optical = drone_pose().compose(mount.base_to_optical())
    ground_z = 3.5
    points, pixels = visible_ground_points(camera, world_from_optical, ground_z, np.random.default_rng(7))
    hits = project_pixels_to_ground(camera, world_from_optical, pixels, ground_z)
    assert hits.valid.all(), hits.reasons
    tolerance = 1e-6 if camera_name == "pinhole" else 1e-3
    error = np.linalg.norm(hits.points - points, axis=1)
    assert error.max() < tolerance, "max error %.3g m" % error.max()
    assert np.allclose(hits.ranges, np.linalg.norm(points - world_from_optical.translation, axis=1))


def test_nadir_hand_computed_geometry():
    """Level drone facing east (ENU yaw 0) at 50 m, nadir camera: image up = nose = east,
    image right = drone's right = south."""
    camera = CAMERAS["pinhole"]
    base = RigidTransform(np.eye(3), np.array([100.0, 200.0, 50.0]))
    world_from_optical = base.compose(CameraMount((0.0, 0.0, 0.0), (0.0, math.pi / 2, 0.0)).base_to_optical())
    pixels = np.array([[640.0, 360.0], [640.0 + 90.0, 360.0], [640.0, 360.0 - 91.0]])
    hits = project_pixels_to_ground(camera, world_from_optical, pixels, 0.0)
    expected = np.array([[100.0, 200.0, 0.0], [100.0, 195.0, 0.0], [105.0, 200.0, 0.0]])
    assert np.allclose(hits.points, expected, atol=1e-9)


def test_oblique_principal_ray_lands_altitude_ahead():
    """Camera pitched 45 degrees down: the image centre sees the ground 'altitude' metres ahead."""
    camera = CAMERAS["plumb_bob"]
    yaw = math.radians(90.0)  # facing north in ENU
    base = RigidTransform(rpy_to_matrix(0.0, 0.0, yaw), np.array([0.0, 0.0, 30.0]))
    mount = CameraMount((0.0, 0.0, 0.0), (0.0, math.radians(45.0), 0.0))
    hits = project_pixels_to_ground(camera, base.compose(mount.base_to_optical()), [[640.0, 360.0]], 0.0)
    assert np.allclose(hits.points[0], [0.0, 30.0, 0.0], atol=1e-6)


def test_rays_at_or_above_horizon_and_other_rejections():
    camera = CAMERAS["pinhole"]
    base = drone_pose(roll=0.0, pitch=0.0)
    # 10 degrees down: the top rows of the image look above the horizon (VFOV is ~43 degrees)
    world_from_optical = base.compose(CameraMount((0, 0, 0), (0.0, math.radians(10.0), 0.0)).base_to_optical())
    pixels = np.array([[640.0, 0.0], [640.0, 360.0 - 910.0 * math.tan(math.radians(10.0))], [640.0, 700.0]])
    hits = project_pixels_to_ground(camera, world_from_optical, pixels, 0.0, min_depression=math.radians(1.0))
    assert hits.reasons[:2] == [ABOVE_HORIZON, ABOVE_HORIZON]  # above, and exactly on, the horizon
    assert hits.reasons[2] == "" and np.isnan(hits.points[:2]).all()
    far = project_pixels_to_ground(camera, world_from_optical, pixels[2:], 0.0, max_range=50.0)
    assert far.reasons == [BEYOND_MAX_RANGE]
    below = project_pixels_to_ground(camera, world_from_optical, pixels[2:], 60.0)
    assert below.reasons == [CAMERA_BELOW_GROUND]


def test_ground_contact_is_bottom_centre():
    assert np.allclose(ground_contact_pixels([[10, 20, 30, 80]]), [[20, 80]])


def test_camera_model_rejects_bad_intrinsics():
    with pytest.raises(CameraModelError, match="fx=0"):
        CameraModel(np.zeros((3, 3)), [], "plumb_bob")
    with pytest.raises(CameraModelError, match="needs 5 or 8"):
        CameraModel(K, [0.1, 0.0, 0.0], "rational_polynomial")
    with pytest.raises(CameraModelError, match="unsupported distortion_model 'kannala'"):
        CameraModel(K, [0.1] * 4, "kannala")
    with pytest.raises(CameraModelError, match="finite"):
        CameraModel(np.full((3, 3), np.nan), [], "plumb_bob")


def test_camera_info_binning_roi_and_rectified():
    CameraInfo = pytest.importorskip("sensor_msgs.msg").CameraInfo  # the geometry runs without ROS
    with pytest.raises(CameraModelError, match="fx=0"):
        CameraModel.from_camera_info(CameraInfo())  # an uncalibrated driver's all-zero message
    info = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model="plumb_bob")
    info.k = K.ravel().tolist()
    info.d = [-0.28, 0.09, 0.0008, -0.0011, -0.012]
    info.p = [800.0, 0.0, 600.0, 0.0, 0.0, 800.0, 350.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    full = CameraModel.from_camera_info(info)
    info.binning_x = info.binning_y = 2
    info.roi.x_offset, info.roi.y_offset = 100, 40
    binned = CameraModel.from_camera_info(info)
    full_pixels = np.array([[300.0, 200.0], [900.0, 500.0]])
    binned_pixels = (full_pixels - [100, 40]) / 2.0
    assert np.allclose(binned.pixels_to_rays(binned_pixels), full.pixels_to_rays(full_pixels), atol=1e-12)
    assert np.allclose(binned.project(full.pixels_to_rays(full_pixels)), binned_pixels, atol=1e-6)
    rectified = CameraModel.from_camera_info(info, rectified=True)
    assert rectified.d.size == 0 and rectified.k[0, 0] == 800.0


def test_quaternions_rpy_and_enu_ned():
    q_yaw90 = np.array([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    assert np.allclose(quaternion_to_matrix(q_yaw90), rpy_to_matrix(0.0, 0.0, math.pi / 2))
    r = rpy_to_matrix(0.3, -0.4, 2.5)
    assert np.allclose(quaternion_to_matrix(matrix_to_quaternion(r)), r)
    assert np.allclose(matrix_to_quaternion(rpy_to_matrix(math.pi, 0.0, 0.0)), [1.0, 0.0, 0.0, 0.0])
    half = quaternion_slerp([0, 0, 0, 1], q_yaw90, 0.5)
    assert np.allclose(quaternion_to_matrix(half), rpy_to_matrix(0.0, 0.0, math.pi / 4))
    # ENU position (east 1, north 2, up 3) is NED (north 2, east 1, down -3)
    assert np.allclose(enu_to_ned_position([1.0, 2.0, 3.0]), [2.0, 1.0, -3.0])
    # Facing north: ENU yaw 90 deg == NED yaw 0; facing east: ENU yaw 0 == NED yaw 90 deg
    assert np.allclose(enu_flu_to_ned_frd_rotation(rpy_to_matrix(0, 0, math.pi / 2)), np.eye(3))
    assert np.allclose(enu_flu_to_ned_frd_rotation(np.eye(3)), rpy_to_matrix(0, 0, math.pi / 2))
    # nose up in FLU (negative pitch) is nose up in FRD (positive pitch), same heading
    ned = enu_flu_to_ned_frd_rotation(rpy_to_matrix(0.0, -0.2, math.pi / 2))
    assert np.allclose(ned, rpy_to_matrix(0.0, 0.2, 0.0))
    assert np.allclose(ned_frd_to_enu_flu_rotation(ned), rpy_to_matrix(0.0, -0.2, math.pi / 2))


def test_default_mount_is_nadir_with_image_up_forward():
    optical = CameraMount().base_to_optical()
    assert np.allclose(optical.rotation[:, 2], [0.0, 0.0, -1.0])  # optical axis down
    assert np.allclose(optical.rotation[:, 1], [-1.0, 0.0, 0.0])  # image down = backwards
    assert np.allclose(optical.rotation[:, 0], [0.0, -1.0, 0.0])  # image right = body right


def test_bearings_recover_known_directions():
    camera = CAMERAS["rational_polynomial"]
    forward = CameraMount((0.2, 0.0, 0.0), (0.0, 0.0, 0.0)).base_to_optical()
    az, el = np.radians([25.0, -18.0, 0.0]), np.radians([8.0, -12.0, 0.0])
    directions_body = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
    pixels = camera.project(directions_body @ forward.rotation)  # body -> optical
    boxes = np.c_[pixels - 15.0, pixels + 15.0]
    bearings = box_bearings(camera, boxes, forward.rotation)
    assert np.allclose(bearings.azimuth, az, atol=1e-6)
    assert np.allclose(bearings.elevation, el, atol=1e-6)
    pinhole = box_bearings(CAMERAS["pinhole"], [[610.0, 340.0, 670.0, 380.0]], forward.rotation)
    assert pinhole.width[0] == pytest.approx(2 * math.atan(30.0 / 900.0), abs=1e-9)
    assert pinhole.height[0] == pytest.approx(2 * math.atan(20.0 / 910.0), abs=1e-9)
    assert np.allclose(bearing_matrix(az[0], el[0])[:, 0], directions_body[0])
    assert np.allclose(azimuth_elevation([[0.0, 1.0, 0.0]]), ([math.pi / 2], [0.0]))


def test_covariance_grows_along_the_ray_and_range_agl():
    cov = horizontal_covariance([0.0, 0.0, 30.0], [0.0, 60.0, 0.0], 0.002, 1.0)
    along, across = math.sqrt(cov[1, 1]), math.sqrt(cov[0, 0])
    assert along > 2 * across and abs(cov[0, 1]) < 1e-9
    assert across == pytest.approx(math.hypot(30, 60) * 0.002)
    assert agl_from_range(20.0, rpy_to_matrix(math.radians(30.0), 0.0, 1.0)) == pytest.approx(20 * math.cos(math.radians(30)))


def test_empty_inputs_give_empty_outputs():
    camera = CAMERAS["plumb_bob"]
    assert camera.project(np.zeros((0, 3))).shape == (0, 2)
    assert camera.pixels_to_rays(np.zeros((0, 2))).shape == (0, 3)
    hits = project_pixels_to_ground(camera, drone_pose().compose(CameraMount().base_to_optical()), np.zeros((0, 2)), 0.0)
    assert hits.points.shape == (0, 3) and hits.reasons == []
    assert box_bearings(camera, np.zeros((0, 4)), np.eye(3)).azimuth.shape == (0,)
