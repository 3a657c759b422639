"""Synthetic aerial scenes with exact boxes: the default dataset of the training pipeline.

A view is rendered with real camera geometry (:mod:`.camera`): a drone at 10-150 m looks
down (nadir) or forward-down (oblique) at procedurally textured ground (:mod:`.textures`)
carrying persons standing and lying, vehicles and obstacles (:mod:`.objects`) under one sun,
then the sensor adds blur, exposure and noise (:mod:`.sensor`).

Object sizes follow the image: a person spans about 7-20 px at 320 px and below (scaled by
``sqrt(min(W, H) / 320)`` above 320), vehicles ~20-65 px, obstacles ~30-115 px.
Box rule: clipped to the image, dropped when under 2 px wide or high or when less than 30 %
of the object stays visible (hidden by nearer objects or outside the frame).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from . import objects as obj_lib
from .camera import PinholeCamera
from .sensor import apply_sensor
from .textures import GroundModel, distance_to_roads, make_ground_model

CLASS_NAMES = ("person", "vehicle", "obstacle")

ImageSize = Union[int, Tuple[int, int]]


@dataclass
class SceneView:
    """One rendered view and everything known about it."""

    bgr: np.ndarray
    boxes: np.ndarray  # (N, 4) float32 xyxy pixels
    labels: np.ndarray  # (N,) int64, index into CLASS_NAMES
    camera: PinholeCamera
    objects: List[obj_lib.SceneObject]
    kept: List[int]  # index into objects of each box


def _size(image_size: ImageSize) -> Tuple[int, int]:
    if isinstance(image_size, (tuple, list)):
        w, h = int(image_size[0]), int(image_size[1])
    else:
        w = h = int(image_size)
    if w < 16 or h < 16:
        raise ValueError(f"image_size must be at least 16 px per side, got {image_size!r}")
    return w, h


def random_camera(rng: np.random.Generator, width: int, height: int,
                  nadir_probability: float = 0.45) -> PinholeCamera:
    """A drone camera over the origin: random field of view, tilt, heading and altitude."""
    hfov = float(rng.uniform(55.0, 75.0))
    f = 0.5 * width / math.tan(math.radians(hfov) / 2.0)
    if rng.random() < nadir_probability:
        pitch = math.pi / 2 - float(rng.uniform(0.0, 0.12))
    else:
        pitch = math.radians(float(rng.uniform(35.0, 65.0)))
    # metres per pixel at the image centre, from the wanted person size in pixels
    # never smaller than at 320 px: small training sizes must stay learnable
    person_px = rng.uniform(7.0, 20.0) * max(1.0, math.sqrt(min(width, height) / 320.0))
    gsd = 1.75 / person_px
    altitude = float(np.clip(gsd * f * math.sin(pitch), 8.0, 150.0))
    cam = PinholeCamera.from_fov(width, height, hfov, (0.0, 0.0, altitude), float(rng.uniform(0, 2 * math.pi)),
                                 pitch, float(rng.normal(0.0, 0.03)))
    while cam.max_view_depression() < math.radians(15.0):  # keep the horizon well out of view
        cam = PinholeCamera.from_fov(width, height, hfov, cam.position, cam.yaw, cam.pitch + 0.05, cam.roll)
    return cam


def view_bounds(cam: PinholeCamera, margin: float = 0.2) -> Tuple[np.ndarray, np.ndarray]:
    """World box ``(lo, hi)`` (metres) holding the camera's ground footprint plus a margin."""
    m = margin
    corners = np.array([[-m, 0.0], [1 + m, 0.0], [-m, 1 + m], [1 + m, 1 + m]]) * (cam.width, cam.height)
    xy = cam.pixel_to_ground(corners)
    return xy.min(axis=0) - 5.0, xy.max(axis=0) + 5.0


def random_counts(rng: np.random.Generator) -> Dict[str, int]:
    """How many objects of each class a single view gets."""
    return {"person": int(rng.integers(0, 9)), "vehicle": int(rng.integers(0, 5)),
            "obstacle": int(rng.integers(1, 9))}


def populate(rng: np.random.Generator, cam: PinholeCamera, ground: GroundModel,
             sun_xy: Tuple[float, float], counts: Optional[Dict[str, int]] = None,
             sampler=None) -> List[obj_lib.SceneObject]:
    """Place persons, vehicles and obstacles on the ground.

    By default positions are drawn in the camera's view (a few just beyond its edges);
    ``sampler(n) -> (n, 2)`` world points overrides that (flights fill a whole area).
    """
    if counts is None:
        counts = random_counts(rng)
    w, h = cam.width, cam.height
    placed: List[obj_lib.SceneObject] = []

    def free(x: float, y: float, r: float, overlap_ok: float) -> bool:
        for o in placed:
            if math.hypot(o.x - x, o.y - y) < (r + o.radius) * (1.0 - overlap_ok):
                return False
        return True

    def sample_ground(n: int = 1) -> np.ndarray:
        if sampler is not None:
            return sampler(n)
        uv = rng.uniform([-0.05 * w, -0.05 * h], [1.05 * w, 1.05 * h], (n, 2))
        return cam.pixel_to_ground(uv)

    def in_area(x: float, y: float) -> bool:
        if sampler is not None:
            return True
        uv, _ = cam.project(np.array([[x, y, 0.0]]))
        return bool(-0.05 * w < uv[0, 0] < 1.05 * w and -0.05 * h < uv[0, 1] < 1.05 * h)

    obstacles = counts.get("obstacle", 0)
    for _ in range(obstacles * 4):
        if sum(o.label == obj_lib.OBSTACLE for o in placed) >= obstacles:
            break
        x, y = sample_ground()[0]
        o = obj_lib.make_obstacle(rng, float(x), float(y), sun_xy)
        # nothing reaching up towards the drone: it would fill the view
        if o.dims[2] > 0.4 * cam.position[2]:
            continue
        if distance_to_roads(ground, (x, y)) > o.radius and free(x, y, o.radius, 0.0):
            placed.append(o)
    for _ in range(counts.get("vehicle", 0)):
        for _try in range(6):
            if ground.roads and rng.random() < 0.7:  # on a road, along it
                road = ground.roads[int(rng.integers(len(ground.roads)))]
                line = road.line
                seg = int(rng.integers(len(line) - 1))
                t = rng.random()
                x, y = line[seg] + t * (line[seg + 1] - line[seg])
                d = line[seg + 1] - line[seg]
                heading = math.atan2(d[1], d[0]) + (math.pi if rng.random() < 0.5 else 0.0)
                side = float(rng.uniform(-0.25, 0.25) * road.width)
                x, y = x - side * math.sin(heading), y + side * math.cos(heading)
                if not in_area(x, y):
                    continue
            else:
                x, y = sample_ground()[0]
                heading = float(rng.uniform(0, 2 * math.pi))
            o = obj_lib.make_vehicle(rng, float(x), float(y), heading)
            if free(x, y, o.radius, 0.1):
                placed.append(o)
                break
    n_persons = counts.get("person", 0)
    lying_p = 0.8 if cam.pitch > math.radians(75) else 0.3
    anchor = None
    for i in range(n_persons):
        for _try in range(6):
            if anchor is not None and rng.random() < 0.5:  # groups of people
                x, y = anchor + rng.normal(0, 2.5, 2)
            else:
                x, y = sample_ground()[0]
            # persons may stand under trees (occlusion) but not inside vehicles or buildings
            blocked = any(math.hypot(o.x - x, o.y - y) < o.radius + 0.4 for o in placed
                          if o.kind in ("vehicle", "building", "pole", "person_standing", "person_lying"))
            if not blocked:
                placed.append(obj_lib.make_person(rng, float(x), float(y), bool(rng.random() < lying_p)))
                anchor = np.array([x, y])
                break
    return placed


def render_view(rng: np.random.Generator, image_size: ImageSize = 320, camera: Optional[PinholeCamera] = None,
                counts: Optional[Dict[str, int]] = None, sensor_strength: float = 1.0) -> SceneView:
    """Render one random aerial view; returns the image, exact boxes and the geometry used."""
    w, h = _size(image_size)
    cam = camera if camera is not None else random_camera(rng, w, h)
    lo, hi = view_bounds(cam)
    ground = make_ground_model(rng, lo, hi)
    bgr = ground.render(cam.ground_homography_matrix, w, h)
    sun_az, sun_el = float(rng.uniform(0, 2 * math.pi)), math.radians(float(rng.uniform(25.0, 70.0)))
    sun = obj_lib.sun_direction(sun_az, sun_el)
    sun_xy = tuple((sun[:2] / max(np.linalg.norm(sun[:2]), 1e-9)).tolist())
    objs = populate(rng, cam, ground, sun_xy, counts)
    boxes, labels, kept = obj_lib.render_objects(bgr, cam, objs, sun, float(rng.uniform(0.3, 0.55)))
    bgr = apply_sensor(rng, bgr, sensor_strength)
    return SceneView(bgr, boxes, labels, cam, objs, kept)


def render_scene(rng: np.random.Generator, image_size: ImageSize = 320, **kwargs
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random scene in memory: ``(bgr uint8 HxWx3, boxes xyxy float32 (N, 4), labels int64 (N,))``.

    ``image_size`` is an int (square) or ``(width, height)``; labels index :data:`CLASS_NAMES`.
    Keyword arguments go to :func:`render_view` (``camera``, ``counts``, ``sensor_strength``).
    """
    view = render_view(rng, image_size, **kwargs)
    return view.bgr, view.boxes, view.labels


def coco_categories() -> List[dict]:
    """COCO categories: ids 1..3 named as :data:`CLASS_NAMES`."""
    return [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(CLASS_NAMES)]


def _render_to_file(job: Tuple[int, str, int, int]) -> Tuple[List[List[float]], List[int]]:
    """Render one image from its seed and write it; returns its boxes and labels (a worker task)."""
    seed, path, w, h = job
    cv2.setNumThreads(1)  # one image per core; OpenCV threads would only contend
    bgr, boxes, labels = render_scene(np.random.default_rng(seed), (w, h))
    if not cv2.imwrite(path, bgr, [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f"could not write image {path}")
    return boxes.tolist(), labels.tolist()


def _write_split(out_dir: Path, split: str, seeds: Sequence[int], image_size: ImageSize, bar,
                 pool=None) -> Dict[str, str]:
    images_dir = out_dir / split / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    w, h = _size(image_size)
    names = [f"{split}_{i:06d}.jpg" for i in range(1, len(seeds) + 1)]
    jobs = [(int(seed), str(images_dir / name), w, h) for seed, name in zip(seeds, names)]
    results = pool.imap(_render_to_file, jobs, chunksize=8) if pool is not None else map(_render_to_file, jobs)
    images, annotations = [], []
    for image_id, (name, (boxes, labels)) in enumerate(zip(names, results), start=1):
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for box, label in zip(boxes, labels):
            bw, bh = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [box[0], box[1], bw, bh], "area": bw * bh, "iscrowd": 0})
        if bar is not None:
            bar.update(1)
    ann_path = out_dir / split / "annotations.json"
    doc = {"info": {"description": f"evit synthetic aerial scenes ({split})", "version": "1"},
           "images": images, "annotations": annotations, "categories": coco_categories()}
    with open(ann_path, "w") as fh:
        json.dump(doc, fh)
    return {"images": str(images_dir), "annotations": str(ann_path)}


def generate_dataset(out_dir: Union[str, os.PathLike], num_images: int, image_size: ImageSize = 320, seed: int = 0,
                     val_fraction: float = 0.2, progress: bool = True, workers: int = 1) -> Dict[str, Dict[str, str]]:
    """Write a COCO dataset ``out_dir/{train,val}/{images/*.jpg, annotations.json}``.

    Deterministic for a seed (each image has its own seed derived from ``seed``), whatever
    the number of ``workers`` (processes rendering in parallel; 1 renders in this process).
    Returns ``{"train": {"images": dir, "annotations": json}, "val": {...}}``.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(out_dir)
    n_val = int(round(num_images * val_fraction))
    if val_fraction > 0 and num_images > 1:
        n_val = max(n_val, 1)
    n_val = min(n_val, num_images - 1) if num_images > 1 else 0
    seeds = np.random.SeedSequence(seed).generate_state(num_images, dtype=np.uint64).tolist()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_images, desc="synth", unit="img")
    pool = None
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        result = {"train": _write_split(out, "train", seeds[: num_images - n_val], image_size, bar, pool),
                  "val": _write_split(out, "val", seeds[num_images - n_val:], image_size, bar, pool)}
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    return result


#: Box colours (BGR) per class in previews.
CLASS_COLORS = ((0, 0, 255), (255, 128, 0), (0, 230, 255))


def write_preview(annotations: Union[str, os.PathLike], path: Union[str, os.PathLike], count: int = 16,
                  columns: int = 4) -> str:
    """A PNG grid of the first ``count`` images of a COCO file with their boxes; returns the path."""
    ann_path = Path(annotations)
    with open(ann_path) as fh:
        doc = json.load(fh)
    by_image: Dict[int, list] = {}
    for a in doc["annotations"]:
        by_image.setdefault(int(a["image_id"]), []).append(a)
    tiles = []
    for im in doc["images"][:count]:
        bgr = cv2.imread(str(ann_path.parent / "images" / im["file_name"]))
        if bgr is None:
            continue
        for a in by_image.get(int(im["id"]), []):
            x, y, w, h = a["bbox"]
            cv2.rectangle(bgr, (int(x), int(y)), (int(round(x + w)) - 1, int(round(y + h)) - 1),
                          CLASS_COLORS[(int(a["category_id"]) - 1) % len(CLASS_COLORS)], 1)
        tiles.append(bgr)
    if not tiles:
        raise ValueError(f"{ann_path}: no readable images to preview")
    h, w = tiles[0].shape[:2]
    tiles = [t if t.shape[:2] == (h, w) else cv2.resize(t, (w, h)) for t in tiles]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    cv2.imwrite(str(path), np.vstack(rows))
    return str(path)
