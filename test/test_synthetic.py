"""Synthetic aerial scenes and flights: exact boxes, determinism, COCO output, camera geometry."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from evit_training.data import objects as obj_lib
from evit_training.data.camera import PinholeCamera
from evit_training.data.flight import generate_flight
from evit_training.data.synthetic import CLASS_NAMES, generate_dataset, render_scene, render_view, write_preview

cv2.setNumThreads(1)


def _nadir(width=320, height=240, altitude=30.0, yaw=math.pi / 2):
    return PinholeCamera.from_fov(width, height, 60.0, (0.0, 0.0, altitude), yaw, math.pi / 2)


# -- camera conventions ------------------------------------------------------------------------

def test_nadir_camera_north_up_east_right():
    cam = _nadir()  # yaw = pi/2: heading north, so north is the top of the image
    uv, depth = cam.project(np.array([[0.0, 0.0, 0.0], [0.0, 5.0, 0.0], [5.0, 0.0, 0.0]]))
    assert uv[0] == pytest.approx([cam.cx, cam.cy])
    assert depth[0] == pytest.approx(30.0)
    assert uv[1, 1] < cam.cy and uv[1, 0] == pytest.approx(cam.cx)  # north -> up
    assert uv[2, 0] > cam.cx and uv[2, 1] == pytest.approx(cam.cy)  # east -> right
    assert uv[2, 0] - cam.cx == pytest.approx(cam.fx * 5.0 / 30.0)


def test_oblique_pixel_ground_round_trip_and_horizon():
    cam = PinholeCamera.from_fov(640, 480, 65.0, (3.0, -2.0, 40.0), 0.7, math.radians(50), 0.05)
    uv = np.array([[10.0, 400.0], [320.0, 240.0], [600.0, 30.0]])
    ground = cam.pixel_to_ground(uv)
    back, depth = cam.project(np.c_[ground, np.zeros(3)])
    assert np.all(depth > 0)
    assert back == pytest.approx(uv, abs=1e-6)
    assert cam.max_view_depression() > 0
    # the optical axis hits the ground ahead along the heading, at altitude / tan(pitch)
    centre = cam.pixel_to_ground(np.array([[cam.cx, cam.cy]]))[0] - (3.0, -2.0)
    assert np.linalg.norm(centre) == pytest.approx(40.0 / math.tan(math.radians(50)), rel=1e-6)
    assert math.atan2(centre[1], centre[0]) == pytest.approx(0.7, abs=1e-6)


# -- exact boxes --------------------------------------------------------------------------------

def _changed_box(before, after):
    ys, xs = np.nonzero(np.any(before != after, axis=2))
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("kind", ["vehicle", "person_lying", "tree", "building", "pole", "person_standing"])
def test_box_is_tight_around_drawn_pixels(kind):
    rng = np.random.default_rng(4)
    cam = PinholeCamera.from_fov(320, 320, 60.0, (0.0, -20.0, 25.0), math.pi / 2, math.radians(55))
    x, y = cam.pixel_to_ground(np.array([[150.0, 170.0]]))[0]
    sun = obj_lib.sun_direction(1.0, math.radians(45))
    if kind == "vehicle":
        obj = obj_lib.make_vehicle(rng, x, y, 0.4)
    elif kind.startswith("person"):
        obj = obj_lib.make_person(rng, x, y, lying=kind == "person_lying")
    else:
        obj = obj_lib.make_obstacle(rng, x, y, (0.7, 0.7), kind=kind)
    before = np.full((320, 320, 3), 128, np.uint8)
    after = before.copy()
    boxes, labels, kept = obj_lib.render_objects(after, cam, [obj], sun, shadow_strength=0.0)
    assert kept == [0] and labels.tolist() == [obj.label]
    assert boxes[0].tolist() == pytest.approx(_changed_box(before, after))


def test_box_clipped_at_the_border_and_hidden_objects_dropped():
    cam = _nadir(320, 320, 30.0)
    sun = obj_lib.sun_direction(0.0, math.radians(60))
    rng = np.random.default_rng(1)
    # a vehicle half outside the left edge (2 of 4.5 m inside): kept, clipped, less than full width
    edge_x = cam.pixel_to_ground(np.array([[0.0, 160.0]]))[0, 0]
    car = obj_lib.make_vehicle(rng, edge_x + 0.2, 0.0, 0.0)
    # a lying person under a building: fully hidden, dropped
    person = obj_lib.make_person(rng, 4.0, 4.0, lying=True)
    building = obj_lib.SceneObject(obj_lib.OBSTACLE, "building", 4.0, 4.0, 0.0, (10.0, 8.0, 4.0),
                                   ((150, 150, 150), (90, 90, 95)))
    img = np.full((320, 320, 3), 100, np.uint8)
    boxes, labels, kept = obj_lib.render_objects(img, cam, [car, person, building], sun, 0.4)
    assert 1 not in kept
    assert sorted(labels.tolist()) == [obj_lib.VEHICLE, obj_lib.OBSTACLE]
    car_box = boxes[kept.index(0)]
    assert car_box[0] == 0.0 and car_box[2] > 2
    assert np.all(boxes[:, [0, 2]] <= 320) and np.all(boxes >= 0)


def test_render_scene_contract_and_determinism():
    for size in (160, (320, 240)):
        a = render_scene(np.random.default_rng(11), size)
        b = render_scene(np.random.default_rng(11), size)
        w, h = (size, size) if isinstance(size, int) else size
        bgr, boxes, labels = a
        assert bgr.shape == (h, w, 3) and bgr.dtype == np.uint8
        assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,)
        assert labels.dtype == np.int64 and len(labels) == len(boxes)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
        if len(boxes):
            assert np.all(boxes[:, 2] - boxes[:, 0] >= 2) and np.all(boxes[:, 3] - boxes[:, 1] >= 2)
            assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
            assert set(labels.tolist()) <= {0, 1, 2}
    c = render_scene(np.random.default_rng(12), 160)
    assert not np.array_equal(c[0], render_scene(np.random.default_rng(11), 160)[0])


def test_scenes_cover_classes_sizes_and_views():
    rng = np.random.default_rng(0)
    counts = np.zeros(3, int)
    person_sides, pitches = [], []
    for _ in range(40):
        view = render_view(rng, 320)
        counts += np.bincount(view.labels, minlength=3)
        pitches.append(view.camera.pitch)
        p = view.boxes[view.labels == 0]
        person_sides += np.maximum(p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]).tolist()
    assert np.all(counts > 20), counts
    assert 5 <= np.median(person_sides) <= 25  # small persons, the hard case
    assert min(pitches) < math.radians(66) and max(pitches) > math.radians(84)  # oblique and nadir


def test_invalid_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        render_scene(np.random.default_rng(0), 8)
    with pytest.raises(ValueError, match="num_images"):
        generate_dataset(tmp_path, 0)
    with pytest.raises(ValueError, match="val_fraction"):
        generate_dataset(tmp_path, 5, val_fraction=1.0)
    with pytest.raises(ValueError, match="workers"):
        generate_dataset(tmp_path, 5, workers=0)


# -- datasets on disk ------------------------------------------------------------------------------

def test_generate_dataset_writes_coco_deterministically(tmp_path):
    paths = generate_dataset(tmp_path / "a", 10, image_size=160, seed=3, val_fraction=0.3, progress=False)
    again = generate_dataset(tmp_path / "b", 10, image_size=160, seed=3, val_fraction=0.3, progress=False)
    n_images = {}
    for split in ("train", "val"):
        with open(paths[split]["annotations"]) as fh:
            doc = json.load(fh)
        with open(again[split]["annotations"]) as fh:
            assert json.load(fh) == doc
        assert [(c["id"], c["name"]) for c in doc["categories"]] == list(enumerate(CLASS_NAMES, start=1))
        n_images[split] = len(doc["images"])
        sizes = {}
        for im in doc["images"]:
            img = cv2.imread(f"{paths[split]['images']}/{im['file_name']}")
            assert img.shape == (160, 160, 3) and (im["width"], im["height"]) == (160, 160)
            sizes[im["id"]] = img.shape
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            assert a["image_id"] in sizes and a["category_id"] in (1, 2, 3)
            assert x >= 0 and y >= 0 and x + w <= 160 and y + h <= 160 and w >= 2 and h >= 2
    assert n_images == {"train": 7, "val": 3}
    png = write_preview(paths["train"]["annotations"], tmp_path / "preview.png")
    assert cv2.imread(png).shape[:2] == (160 * 2, 160 * 4)


def test_parallel_generation_writes_the_same_dataset(tmp_path):
    one = generate_dataset(tmp_path / "one", 6, image_size=64, seed=9, val_fraction=0.0, progress=False)
    two = generate_dataset(tmp_path / "two", 6, image_size=64, seed=9, val_fraction=0.0, progress=False, workers=2)
    with open(one["train"]["annotations"]) as a, open(two["train"]["annotations"]) as b:
        assert json.load(a) == json.load(b)
    for name in sorted(p.name for p in (tmp_path / "one" / "train" / "images").iterdir()):
        assert (tmp_path / "one" / "train" / "images" / name).read_bytes() == \
            (tmp_path / "two" / "train" / "images" / name).read_bytes()


def test_cli_synth_writes_dataset(tmp_path):
    from typer.testing import CliRunner
    import typer

    from evit_training.cli_data import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps Typer in multi-command mode
        pass

    result = CliRunner().invoke(app, ["synth", str(tmp_path / "ds"), "--num-images", "4", "--image-size", "96",
                                      "--seed", "1", "--val-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "ds" / "val" / "annotations.json") as fh:
        assert len(json.load(fh)["images"]) == 1
    assert (tmp_path / "ds" / "preview.png").exists()
    assert len(list((tmp_path / "ds" / "train" / "images").glob("*.jpg"))) == 3


# -- flights ------------------------------------------------------------------------------------

def _rotation(yaw, pitch, roll):
    """The documented pose convention, written out independently of camera.py."""
    f = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), -math.sin(pitch)])
    down = -np.array([math.sin(pitch) * math.cos(yaw), math.sin(pitch) * math.sin(yaw), math.cos(pitch)])
    right = np.cross(down, f)
    x = math.cos(roll) * right + math.sin(roll) * down
    y = -math.sin(roll) * right + math.cos(roll) * down
    return np.stack([x, y, f], axis=1)


def test_flight_is_coherent_and_its_geometry_is_published():
    frames = list(generate_flight(12, image_size=(320, 240), seed=5, fps=10.0))
    again = list(generate_flight(3, image_size=(320, 240), seed=5, fps=10.0))
    assert [f.index for f in frames] == list(range(12))
    assert frames[1].stamp_s == pytest.approx(0.1)
    assert np.array_equal(frames[2].bgr, again[2].bgr) and np.array_equal(frames[2].boxes, again[2].boxes)
    total = 0
    for prev, cur in zip(frames, frames[1:]):
        step = np.linalg.norm(np.subtract(cur.pose["position_enu"], prev.pose["position_enu"]))
        assert 0.05 < step < 1.0  # a few m/s at 10 fps
        assert abs(cur.pose["yaw"] - prev.pose["yaw"]) < 0.1
        # the same object moves only a few pixels between frames
        for tid, box in zip(cur.track_ids.tolist(), cur.boxes):
            if tid in prev.track_ids.tolist():
                old = prev.boxes[prev.track_ids.tolist().index(tid)]
                assert np.abs((box[:2] + box[2:]) - (old[:2] + old[2:])).max() / 2 < 12
                total += 1
    assert total > 10
    for f in frames:
        assert f.bgr.shape == (240, 320, 3)
        assert set(f.camera) == {"fx", "fy", "cx", "cy", "width", "height"}
        assert len(f.boxes) == len(f.labels) == len(f.track_ids) == len(f.positions_enu)
        # the published pose and intrinsics put each object's ground point near its box
        rot = _rotation(f.pose["yaw"], f.pose["pitch"], f.pose["roll"])
        assert rot == pytest.approx(np.asarray(f.pose["rotation_world_from_camera"]), abs=1e-9)
        pc = (f.positions_enu - np.asarray(f.pose["position_enu"])) @ rot
        u = f.camera["fx"] * pc[:, 0] / pc[:, 2] + f.camera["cx"]
        v = f.camera["fy"] * pc[:, 1] / pc[:, 2] + f.camera["cy"]
        for (x0, y0, x1, y1), uu, vv, lab in zip(f.boxes, u, v, f.labels):
            pad = 3 + (0.6 * max(x1 - x0, y1 - y0) if lab == obj_lib.OBSTACLE else 2)  # tall things lean
            assert x0 - pad <= uu <= x1 + pad and y0 - pad <= vv <= y1 + pad


def test_pose_is_rep103_rpy_of_the_camera_link():
    """The geolocation half can rebuild the camera rotation from the published angles."""
    from evit_perception.geolocation.frames import LINK_OPTICAL, rpy_to_matrix

    for yaw, pitch, roll in [(0.3, 0.9, 0.0), (2.0, math.pi / 2, 0.04), (-1.1, 0.7, -0.05)]:
        cam = PinholeCamera.from_fov(640, 480, 60.0, (1.0, 2.0, 30.0), yaw, pitch, roll)
        expected = rpy_to_matrix(roll, pitch, yaw) @ LINK_OPTICAL
        assert cam.rotation_world_from_camera == pytest.approx(expected, abs=1e-12)


def test_flight_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fps"):
        next(generate_flight(2, fps=0.0))
    with pytest.raises(ValueError, match="num_frames"):
        next(generate_flight(-1))
