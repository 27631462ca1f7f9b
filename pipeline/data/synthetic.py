"""The built-in synthetic KITTI-format road scenes (the embedded default dataset).

:func:`write_synthetic_kitti` writes KITTI's ``training/`` layout::

    root/image_2/000000.png   RGB, width x height
    root/label_2/000000.txt   one 15-field KITTI label line per object

so a first run of the pipeline needs no download. :func:`render_scene` renders one scene in
memory (for tests and previews).

Conventions
-----------
* Image pixels: row ``v`` down, column ``u`` right; pixel ``(v, u)`` covers ``[u, u+1) x
  [v, v+1)``. 2D boxes are ``x1, y1, x2, y2`` in pixels with ``x2 - x1`` the width (no +1),
  clipped to ``[0, width] x [0, height]``. A box is the tight box of the pixels the object
  covers, so its coordinates are whole numbers.
* Camera: KITTI's rectified camera, x right, y down, z forward, metres. A pinhole with focal
  length ``f = 1.92 * height`` (KITTI: 721 px for 375 px rows), principal point at the image
  centre horizontally and at the horizon row vertically, 1.65 m above a flat ground plane.
  The horizon row varies per image (0.40..0.50 of the height).
* 3D fields follow KITTI: ``h w l`` in metres, ``x y z`` the bottom centre of the 3D box in
  camera coordinates, ``rotation_y`` the yaw about the camera y axis (0: heading along +x),
  ``alpha = rotation_y - atan2(x, z)`` (observation angle), both in ``[-pi, pi)``.

Object scale
------------
Sizes are per class (KITTI's mean 3D sizes, jittered) and pixel sizes come from the pinhole,
so an object's pixel height is ``h * (bottom_row - horizon_row) / 1.65``: the scene scales
with the image height. Depths are drawn so that the unclipped 2D box height lies between about
0.03 and 0.42 of the image height: about 10..150 px in a 1242x375 KITTI frame, about 6..80 px
in the default 640x192 frame.

Labels
------
``truncated`` is the fraction of the object's unclipped box area outside the image, rounded
up to the next 0.01 (so any truncation is non-zero). ``occluded`` comes from per-object masks:
objects are drawn far to near (by ``z``), and the fraction of an object's in-image pixels
covered by nearer objects gives 0 (< 10 %), 1 (< 50 %) or 2. Objects that would be more than
90 % occluded, more than 85 % truncated or tiny after clipping are neither drawn nor labelled.
Far-away clutter (tiny cars and people near the horizon) is drawn and labelled ``DontCare``
with KITTI's sentinel values; its box is that of the cluster's pixels left visible by the
labelled objects (padded by 1 px), and a cluster they hide entirely gets no region.
Buildings, trees, poles and signs are unlabelled background, drawn behind all objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

KITTI_CLASSES = ("Car", "Van", "Truck", "Tram", "Pedestrian", "Person_sitting", "Cyclist", "Misc",
                 "DontCare")
MIN_IMAGE_SIZE = 64  # smallest accepted width and height
FOCAL_PER_HEIGHT = 1.92  # focal length / image height (KITTI: 721 / 375)
CAMERA_HEIGHT = 1.65  # metres above the ground (KITTI)
MAX_BOX_HEIGHT = 0.42  # largest unclipped box height, fraction of the image height
MIN_BOX_HEIGHT = 0.028  # smallest unclipped box height, fraction of the image height
MAX_OCCLUSION = 0.9  # objects hidden more than this are neither drawn nor labelled
EDGE_FRACTION = 0.25  # share of objects placed near and straddling the left or right border
LOW_DETAIL_PX = 9.0  # vehicles drawn fewer pixels tall than this get a simplified sprite

Array = np.ndarray
RGB = tuple[float, float, float]
_Dims = tuple[float, float, float]  # h, w, l metres
_Vec3 = tuple[float, float, float]  # x, y, z metres
_Box = tuple[float, float, float, float]  # x1, y1, x2, y2 pixels


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneObject:
    """One labelled object (or DontCare region) of a scene.

    Attributes:
        type: raw KITTI class name.
        box: ``x1, y1, x2, y2`` in pixels, clipped to the image.
        truncated: fraction of the unclipped box outside the image (DontCare: -1).
        occluded: 0 visible, 1 partly, 2 largely occluded (DontCare: -1).
        alpha: observation angle in radians (DontCare: -10).
        dims: ``h, w, l`` in metres (DontCare: -1).
        location: ``x, y, z`` bottom centre in camera coordinates (DontCare: -1000).
        rotation_y: yaw in radians (DontCare: -10).
        occluded_fraction: fraction of the in-image pixels hidden by nearer objects.
    """

    type: str
    box: tuple[float, float, float, float]
    truncated: float = -1.0
    occluded: int = -1
    alpha: float = -10.0
    dims: tuple[float, float, float] = (-1.0, -1.0, -1.0)
    location: tuple[float, float, float] = (-1000.0, -1000.0, -1000.0)
    rotation_y: float = -10.0
    occluded_fraction: float = 0.0

    def to_kitti_line(self) -> str:
        """The 15-field KITTI label line (no newline)."""
        x1, y1, x2, y2 = self.box
        h, w, l = self.dims
        x, y, z = self.location
        return (f"{self.type} {self.truncated:.2f} {self.occluded:d} {self.alpha:.2f} "
                f"{x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} {h:.2f} {w:.2f} {l:.2f} "
                f"{x:.2f} {y:.2f} {z:.2f} {self.rotation_y:.2f}")


# --------------------------------------------------------------------------------------------
# Scene geometry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Camera:
    """Pinhole camera ``u = cx + f X / Z``, ``v = cy + f Y / Z`` (cy is the horizon row)."""

    width: int
    height: int
    f: float
    cx: float
    cy: float

    def project(self, points: Array) -> Array:
        """``[3, N]`` camera points -> ``[2, N]`` pixel coordinates."""
        return np.stack([self.cx + self.f * points[0] / points[2],
                         self.cy + self.f * points[1] / points[2]])

    def ground_row(self, z: float) -> float:
        """Image row of the ground at depth ``z``."""
        return self.cy + self.f * CAMERA_HEIGHT / z


@dataclass(frozen=True)
class _Road:
    """Straight road along +z. ``center`` is its centre's x; lanes are 3.5 m wide."""

    center: float
    half_width: float
    lanes: int
    parking: float  # width of the parking strip on each side (0: none)
    sidewalk: float

    def lane_center(self, k: int) -> float:
        """Camera x of lane ``k`` (0 = leftmost)."""
        return self.center - self.half_width + self.parking + 3.5 * (k + 0.5)


@dataclass(frozen=True)
class _Style:
    """Per-image colours and lighting."""

    sky_top: Array
    sky_horizon: Array
    road: Array
    sidewalk: Array
    verge: Array
    marking: Array
    haze: float
    brightness: float
    contrast: float
    gains: Array
    noise: float
    sun: float  # horizontal shadow offset, fraction of the object width


@dataclass
class _Patch:
    """Pixels of one object sprite over its unclipped frame box (may extend off-image).

    ``xs``/``ys`` are pixel-centre offsets from the frame's left/top edge in pixels.
    """

    r0: int
    c0: int
    xs: Array  # [1, w]
    ys: Array  # [h, 1]
    fw: float
    fh: float
    color: Array  # [h, w, 3] float32
    mask: Array  # [h, w] bool

    @staticmethod
    def for_frame(frame: tuple[float, float, float, float]) -> "_Patch":
        """An empty patch covering the pixels whose centres lie in ``frame``."""
        x1, y1, x2, y2 = frame
        c0, c1 = math.floor(x1), math.ceil(x2)
        r0, r1 = math.floor(y1), math.ceil(y2)
        xs = (np.arange(c0, c1, dtype=np.float32) + 0.5 - x1)[None, :]
        ys = (np.arange(r0, r1, dtype=np.float32) + 0.5 - y1)[:, None]
        shape = (r1 - r0, c1 - c0)
        return _Patch(r0, c0, xs, ys, x2 - x1, y2 - y1,
                      np.zeros(shape + (3,), np.float32), np.zeros(shape, bool))

    def paint(self, region: Array, rgb: Array | RGB) -> None:
        """Set ``region`` (broadcastable to the patch) to colour ``rgb``."""
        np.copyto(self.color, np.asarray(rgb, np.float32), where=region[..., None])
        self.mask |= region

    def shade(self, top: float, bottom: float) -> None:
        """Multiply the colours by a vertical light gradient from ``top`` to ``bottom``."""
        v = self.ys / max(self.fh, 1e-6)
        self.color *= (top + (bottom - top) * np.clip(v, 0.0, 1.0))[..., None]


@dataclass(frozen=True)
class _Face:
    """One face of a vehicle inside a patch, in normalised face coordinates.

    ``a`` runs 0..1 along the face (side faces: 0 rear, 1 front), ``b`` 0..1 top to bottom.
    ``length`` and ``height`` (metres) turn metric radii into elliptic normalised ones.
    """

    a: Array  # [1, w]
    b: Array  # [h, 1]
    inside: Array  # [1, w] bool
    length: float
    height: float

    def rect(self, a0: float, a1: float, b0: float, b1: float) -> Array:
        return self.inside & (self.a >= a0) & (self.a < a1) & (self.b >= b0) & (self.b < b1)

    def trapezoid(self, b0: float, b1: float, top: tuple[float, float],
                  bottom: tuple[float, float]) -> Array:
        """Rows ``b0..b1``; the a-range goes linearly from ``top`` at b0 to ``bottom`` at b1."""
        t = np.clip((self.b - b0) / max(b1 - b0, 1e-6), 0.0, 1.0)
        left = top[0] + (bottom[0] - top[0]) * t
        right = top[1] + (bottom[1] - top[1]) * t
        return self.inside & (self.b >= b0) & (self.b < b1) & (self.a >= left) & (self.a < right)

    def wheel(self, a: float, radius: float) -> tuple[Array, Array]:
        """(tyre, hub) regions of a wheel of ``radius`` metres touching the ground at ``a``."""
        ra, rb = radius / self.length, radius / self.height
        d = ((self.a - a) / ra) ** 2 + ((self.b - (1.0 - rb)) / rb) ** 2
        return self.inside & (d <= 1.0), self.inside & (d <= 0.3)


@dataclass(frozen=True)
class _ClassSpec:
    """Sampling parameters of one class: weight, mean 3D size ``h, w, l``, depth range."""

    weight: float
    dims: tuple[float, float, float]
    jitter: float
    z_max: float


_CLASSES: dict[str, _ClassSpec] = {
    "Car": _ClassSpec(0.56, (1.53, 1.63, 3.88), 0.07, 85.0),
    "Van": _ClassSpec(0.09, (2.21, 1.90, 5.08), 0.08, 80.0),
    "Truck": _ClassSpec(0.05, (3.25, 2.59, 10.1), 0.12, 85.0),
    "Tram": _ClassSpec(0.025, (3.53, 2.54, 16.1), 0.05, 85.0),
    "Pedestrian": _ClassSpec(0.14, (1.76, 0.66, 0.84), 0.06, 50.0),
    "Person_sitting": _ClassSpec(0.02, (1.27, 0.59, 0.80), 0.08, 35.0),
    "Cyclist": _ClassSpec(0.08, (1.74, 0.60, 1.76), 0.06, 55.0),
    "Misc": _ClassSpec(0.035, (1.91, 1.51, 3.58), 0.22, 55.0),
}
_VEHICLES = ("Car", "Van", "Truck", "Tram")


@dataclass
class _Planned:
    """An object placed in 3D with its sprite rendered (not yet composited)."""

    type: str
    dims: tuple[float, float, float]
    location: tuple[float, float, float]
    rotation_y: float
    alpha: float
    patch: _Patch


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _wrap_angle(angle: float) -> float:
    """Wrap to ``[-pi, pi)``."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def _color(rng: np.random.Generator, rgb: RGB, jitter: float = 12.0) -> Array:
    """``rgb`` with a uniform per-channel jitter, as float32."""
    jittered = np.asarray(rgb) + rng.uniform(-jitter, jitter, 3)
    return np.minimum(np.maximum(jittered, 0), 255).astype(np.float32)


def _gray(rng: np.random.Generator, low: float, high: float, tint: float) -> Array:
    """A grey between ``low`` and ``high`` with a small per-channel tint."""
    level = float(rng.uniform(low, high))
    return np.clip(level + rng.uniform(-tint, tint, 3), 0, 255).astype(np.float32)


def _pick(rng: np.random.Generator, options: list[RGB], jitter: float = 12.0) -> Array:
    return _color(rng, options[int(rng.integers(len(options)))], jitter)


def _frac(x: Array) -> Array:
    """Fractional part (faster than ``x % 1.0``)."""
    return x - np.floor(x)


def _ellipse(x: Array, y: Array, cx: float, cy: float, rx: float, ry: float) -> Array:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _segment(x: Array, y: Array, p: tuple[float, float], q: tuple[float, float],
             half_width: float) -> Array:
    """Pixels within ``half_width`` of the segment ``p``-``q`` (same units as x, y)."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = np.clip(((x - p[0]) * dx + (y - p[1]) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    return (x - p[0] - t * dx) ** 2 + (y - p[1] - t * dy) ** 2 <= half_width ** 2


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> Array:
    """``[height, width]`` float32 value noise in [0, 1], smooth at the scale of ``cell`` px."""
    small = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _blend_into(canvas: Array, r0: int, c0: int, region: Array, color: Array) -> None:
    """Paint ``region`` (placed with its top-left at ``r0, c0``, clipped) with ``color``.

    ``canvas`` is planar ``[3, H, W]``; ``color`` is ``[3]`` or ``[h, w, 3]`` matching ``region``.
    """
    h, w = region.shape
    H, W = canvas.shape[1:]
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + h, H), min(c0 + w, W)
    if rr1 <= rr0 or cc1 <= cc0:
        return
    sub = region[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0][None]
    target = canvas[:, rr0:rr1, cc0:cc1]
    if color.ndim == 3:
        np.copyto(target, color[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0].transpose(2, 0, 1), where=sub)
    else:
        np.copyto(target, np.asarray(color, np.float32)[:, None, None], where=sub)


# --------------------------------------------------------------------------------------------
# Scene set-up
# --------------------------------------------------------------------------------------------
def _make_camera(rng: np.random.Generator, width: int, height: int) -> _Camera:
    return _Camera(width, height, FOCAL_PER_HEIGHT * height, width / 2.0,
                   height * float(rng.uniform(0.40, 0.50)))


def _make_road(rng: np.random.Generator) -> _Road:
    lanes = int(rng.integers(2, 5))
    parking = float(rng.choice([0.0, 2.3], p=[0.4, 0.6]))
    half_width = lanes * 1.75 + parking
    road = _Road(0.0, half_width, lanes, parking, float(rng.uniform(2.5, 5.0)))
    own_lane = int(rng.integers(lanes // 2, lanes))
    center = -(road.lane_center(own_lane)) + float(rng.normal(0.0, 0.3))
    return _Road(center, half_width, lanes, parking, road.sidewalk)


def _make_style(rng: np.random.Generator) -> _Style:
    weather = rng.choice(["clear", "overcast", "evening"], p=[0.5, 0.35, 0.15])
    if weather == "clear":
        top, horizon = (60, 115, 190), (185, 205, 225)
    elif weather == "overcast":
        top, horizon = (140, 145, 155), (200, 202, 205)
    else:
        top, horizon = (70, 80, 130), (230, 170, 120)
    return _Style(
        sky_top=_color(rng, top, 15), sky_horizon=_color(rng, horizon, 12),
        road=_gray(rng, 72.0, 120.0, 4.0),
        sidewalk=_gray(rng, 130.0, 170.0, 6.0) * np.array([1.0, 0.97, 0.92], np.float32),
        verge=_pick(rng, [(85, 115, 60), (110, 120, 70), (125, 110, 85)], 15),
        marking=_color(rng, (225, 225, 220), 10),
        haze=float(rng.uniform(90.0, 250.0)),
        brightness=float(rng.uniform(0.72, 1.15)),
        contrast=float(rng.uniform(0.8, 1.15)),
        gains=rng.uniform(0.95, 1.05, 3).astype(np.float32),
        noise=float(rng.uniform(0.6, 1.4)),
        sun=float(rng.uniform(-0.25, 0.25)),
    )


# --------------------------------------------------------------------------------------------
# Background: sky, ground, road markings, buildings, trees, poles
# --------------------------------------------------------------------------------------------
def _draw_sky_and_ground(rng: np.random.Generator, cam: _Camera, road: _Road,
                         style: _Style) -> Array:
    """Planar ``[3, H, W]`` float32 canvas: sky gradient, road, sidewalks, verges, markings."""
    H, W = cam.height, cam.width
    v = np.arange(H, dtype=np.float32)[:, None] + 0.5
    u = np.arange(W, dtype=np.float32)[None, :] + 0.5
    t = np.clip(v / cam.cy, 0.0, 1.0)
    clouds = np.float32(rng.uniform(0, 40)) * (_smooth_noise(rng, H, W, max(H // 6, 4)) - 0.5)
    canvas = np.empty((3, H, W), np.float32)
    for c in range(3):
        canvas[c] = style.sky_top[c] * (1 - t) + style.sky_horizon[c] * t + clouds

    g0 = int(math.floor(cam.cy - 0.5)) + 1  # first row whose centre lies below the horizon
    z = cam.f * CAMERA_HEIGHT / np.maximum(v[g0:] - cam.cy, 0.35)  # [h, 1]
    dx = (u - cam.cx) * (z / cam.f) - road.center  # [h, W] metres from the road centre
    adx = np.abs(dx)
    zone = ((adx >= road.half_width).astype(np.uint8) + (adx >= road.half_width + 0.25)
            + (adx >= road.half_width + road.sidewalk))
    palette = np.stack([style.road, style.sidewalk * 1.15, style.sidewalk, style.verge]).astype(np.float32)
    texture = 0.9 + 0.2 * _smooth_noise(rng, H - g0, W, max(H // 24, 2))
    ground = np.stack([np.take(palette[:, c], zone) for c in range(3)]) * texture
    cover = _marking_cover(rng, z, dx, cam, road)
    ground += (style.marking[:, None, None] - ground) * cover
    haze = (1.0 - np.exp(-z / style.haze)).astype(np.float32)[None]
    ground *= 1 - haze
    ground += style.sky_horizon[:, None, None] * haze
    canvas[:, g0:] = ground
    _draw_treeline(rng, canvas, cam, style)
    return canvas


def _marking_cover(rng: np.random.Generator, z: Array, dx: Array, cam: _Camera, road: _Road) -> Array:
    """``[h, W]`` coverage (0..1, anti-aliased) of lane markings and sometimes a zebra crossing.

    Dividers are dashed (3.6 m of every 9 m), the edges of the travel lanes solid.
    """
    per_m = cam.f / z  # pixels per metre at each row
    cover = np.zeros_like(dx)
    edge = road.half_width - road.parking - 0.2 if road.parking else road.half_width - 0.25
    for line_x in (-edge, edge):
        np.maximum(cover, np.clip((0.08 - np.abs(dx - line_x)) * per_m + 0.5, 0, 1), out=cover)
    phase = float(rng.uniform(0, 9))
    dash = (_frac((z + phase) / 9.0) < 0.4).astype(np.float32)
    for k in range(1, road.lanes):
        line_x = road.lane_center(k) - 1.75 - road.center
        np.maximum(cover, dash * np.clip((0.07 - np.abs(dx - line_x)) * per_m + 0.5, 0, 1), out=cover)
    if rng.random() < 0.2:
        z0 = float(rng.uniform(9, 30))
        zebra = (z >= z0) & (z < z0 + 4.0) & (np.abs(dx) < road.half_width - road.parking)
        np.maximum(cover, (zebra & (_frac(dx / 1.1) < 0.5)).astype(np.float32), out=cover)
    return cover * np.float32(rng.uniform(0.75, 1.0))


def _draw_treeline(rng: np.random.Generator, canvas: Array, cam: _Camera, style: _Style) -> None:
    """A hazy band of distant trees/hills sitting on the horizon."""
    W = cam.width
    profile = _smooth_noise(rng, 1, W, max(W // 40, 2))[0]
    heights = cam.height * rng.uniform(0.005, 0.05) * (0.3 + profile)
    v = np.arange(cam.height, dtype=np.float32)[:, None] + 0.5
    band = (v < cam.cy) & (v > cam.cy - heights[None, :])
    color = _pick(rng, [(70, 90, 70), (95, 105, 110), (80, 85, 75)], 10)
    color = 0.55 * color + 0.45 * style.sky_horizon
    canvas[:, band] = color[:, None]


def _draw_buildings(rng: np.random.Generator, canvas: Array, cam: _Camera, road: _Road,
                    style: _Style) -> list[float]:
    """Facades parallel to the road on both sides; returns each side's free x offset."""
    free = []
    for side in (-1.0, 1.0):
        setback = road.half_width + road.sidewalk + float(rng.uniform(0.3, 5.0))
        free.append(setback)
        plane_x = road.center + side * setback
        if rng.random() < 0.25 or side * plane_x < 1.0:
            continue
        facades = []
        z = float(rng.uniform(3.0, 14.0))
        while z < 160.0:
            length = float(rng.uniform(8.0, 35.0))
            facades.append((z, z + length, float(rng.uniform(5.0, 24.0))))
            z += length + (float(rng.uniform(2.0, 12.0)) if rng.random() < 0.35 else 0.0)
        for z0, z1, tall in reversed(facades):
            _draw_facade(rng, canvas, cam, style, plane_x, z0, z1, tall)
    return free


def _draw_facade(rng: np.random.Generator, canvas: Array, cam: _Camera, style: _Style,
                 plane_x: float, z0: float, z1: float, tall: float) -> None:
    """One building front on the plane ``x = plane_x`` from depth z0 to z1, ``tall`` metres."""
    ua, ub = cam.cx + cam.f * plane_x / z0, cam.cx + cam.f * plane_x / z1
    c0, c1 = max(int(math.floor(min(ua, ub))), 0), min(int(math.ceil(max(ua, ub))), cam.width)
    if c1 <= c0:
        return
    u = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
    zc = cam.f * plane_x / (u - cam.cx)
    zc = np.where(zc > 0, zc, 1e6)
    r0 = max(int(math.floor(cam.cy + cam.f * (CAMERA_HEIGHT - tall) / z0)), 0)
    r1 = min(int(math.ceil(cam.ground_row(z0))) + 1, cam.height)
    if r1 <= r0:
        return
    v = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    above = CAMERA_HEIGHT - (v - cam.cy) * (zc / cam.f)  # [h, w] metres above the ground
    inside = (above >= 0) & (above <= tall) & (zc >= z0) & (zc <= z1)
    wall = _pick(rng, [(170, 150, 130), (200, 190, 170), (140, 120, 110), (120, 125, 135),
                       (185, 175, 150), (150, 90, 70)], 15)
    glass = _color(rng, (55, 65, 80), 10)
    spacing, floor_h = float(rng.uniform(2.5, 4.0)), float(rng.uniform(2.8, 3.4))
    along, level = zc / spacing, above / floor_h
    column = np.floor(along)
    column_win = (along - column > 0.3) & (along - column < 0.75)
    floor = np.floor(level)
    frac = level - floor
    win = column_win & (frac > 0.35) & (frac < 0.8) & (above > 3.0) & (above < tall - 0.8)
    cell = (column.astype(np.int32) * 7919 + floor.astype(np.int32) * 104729) % 23
    light = np.where(win, 0.6 + cell.astype(np.float32) * np.float32(0.8 / 22.0),
                     np.where(above < 3.0, np.float32(0.7), np.float32(1.0)))
    haze = (1.0 - np.exp(-zc / style.haze))  # [1, w]
    shade = light * (1 - haze)
    color = np.where(win[None], glass[:, None, None], wall[:, None, None]) * shade[None]
    color += style.sky_horizon[:, None, None] * haze[None]
    np.copyto(canvas[:, r0:r1, c0:c1], color, where=inside[None])


def _draw_trees_and_poles(rng: np.random.Generator, canvas: Array, cam: _Camera, road: _Road,
                          free: list[float]) -> None:
    """Roadside trees, poles, street lamps and signs (unlabelled distractors), far to near."""
    items = []
    for _ in range(int(rng.integers(2, 10))):
        side = float(rng.choice([-1.0, 1.0]))
        offset = road.half_width + float(rng.uniform(0.3, max(free[side > 0] - 0.6, 0.5)))
        items.append(("tree" if rng.random() < 0.55 else "pole", road.center + side * offset,
                      float(rng.uniform(5.0, 90.0))))
    for kind, x, z in sorted(items, key=lambda item: -item[2]):
        if kind == "tree":
            _draw_tree(rng, canvas, cam, x, z)
        else:
            _draw_pole(rng, canvas, cam, x, z, toward_road=-1.0 if x > road.center else 1.0)


def _draw_tree(rng: np.random.Generator, canvas: Array, cam: _Camera, x: float, z: float) -> None:
    trunk_h, radius = float(rng.uniform(1.8, 3.0)), float(rng.uniform(1.2, 2.6))
    stretch = float(rng.uniform(1.0, 1.5))
    s = cam.f / z
    u0, g = cam.cx + x * s, cam.ground_row(z)
    top = g - (trunk_h + 2 * radius * stretch) * s
    frame = (u0 - radius * s, top, u0 + radius * s, g)
    if frame[2] < 0 or frame[0] > cam.width or frame[3] - frame[1] < 2:
        return
    p = _Patch.for_frame(frame)
    px = p.xs - p.fw / 2
    trunk = np.abs(px) <= max(0.15 * s, 0.5)
    p.paint(trunk & (p.ys > p.fh - trunk_h * s - radius * s), _color(rng, (85, 65, 45), 10))
    cy = (radius * stretch) * s
    ang = np.arctan2(p.ys - cy, px)
    wobble = 1.0 + 0.12 * np.sin(5 * ang + float(rng.uniform(0, 6.3)))
    crown = ((px / (radius * s)) ** 2 + ((p.ys - cy) / (radius * stretch * s)) ** 2) <= wobble ** 2
    leaf = _pick(rng, [(60, 100, 45), (45, 80, 40), (85, 110, 50), (100, 95, 45)], 12)
    p.paint(crown, leaf)
    light = 0.85 + 0.15 * np.sin(px * 7.0 / (radius * s) + 1.3) * np.sin(p.ys * 6.0 / (radius * s))
    p.color *= light[..., None]
    _blend_into(canvas, p.r0, p.c0, p.mask, p.color)


def _draw_pole(rng: np.random.Generator, canvas: Array, cam: _Camera, x: float, z: float,
               toward_road: float) -> None:
    tall = float(rng.uniform(4.5, 8.5))
    s = cam.f / z
    u0, g = cam.cx + x * s, cam.ground_row(z)
    reach = 1.6 if rng.random() < 0.4 else 0.5
    frame = (u0 - reach * s, g - tall * s, u0 + reach * s, g)
    if frame[2] < 0 or frame[0] > cam.width:
        return
    p = _Patch.for_frame(frame)
    px = p.xs - p.fw / 2
    metal = _color(rng, (105, 108, 112), 20)
    p.paint(np.abs(px) <= max(0.08 * s, 0.5), metal)
    if reach > 1.0:  # street lamp arm
        arm = (px * toward_road >= 0) & (px * toward_road <= reach * s) & (p.ys < max(0.15 * s, 1.0))
        p.paint(arm, metal)
    elif rng.random() < 0.7:  # traffic sign
        sign_y = (tall - 2.6) * s
        r = max(0.35 * s, 1.0)
        if rng.random() < 0.5:
            ring = _ellipse(px, p.ys, 0.0, sign_y, r, r)
            p.paint(ring, (200, 30, 30))
            p.paint(_ellipse(px, p.ys, 0.0, sign_y, 0.7 * r, 0.7 * r), (235, 235, 235))
        else:
            p.paint((np.abs(px) < r) & (np.abs(p.ys - sign_y) < r), _color(rng, (30, 70, 160), 10))
    _blend_into(canvas, p.r0, p.c0, p.mask, p.color)


# --------------------------------------------------------------------------------------------
# Object sprites
# --------------------------------------------------------------------------------------------
_CAR_COLORS: list[RGB] = [(225, 225, 222), (175, 178, 182), (110, 112, 115), (35, 36, 40),
                          (170, 30, 30), (40, 70, 140), (25, 35, 70), (40, 90, 60),
                          (190, 175, 140), (220, 190, 40), (210, 110, 30), (100, 70, 50)]
_VAN_COLORS: list[RGB] = [(230, 230, 228), (230, 230, 228), (180, 182, 186), (90, 92, 96),
                          (40, 70, 140), (170, 30, 30), (230, 200, 40)]
_TRUCK_CARGO: list[RGB] = [(235, 235, 235), (200, 200, 200), (60, 90, 150), (160, 40, 40),
                           (200, 180, 140), (70, 110, 70)]
_TRAM_COLORS: list[RGB] = [(235, 235, 228), (200, 30, 40), (240, 200, 40), (30, 90, 160),
                           (60, 140, 70)]
_CLOTHES: list[RGB] = [(30, 30, 35), (200, 40, 40), (40, 60, 140), (230, 230, 230),
                       (120, 120, 125), (60, 110, 60), (220, 180, 40), (150, 80, 40),
                       (110, 50, 120), (200, 110, 150), (40, 140, 160), (90, 70, 55)]
_TROUSERS: list[RGB] = [(45, 55, 95), (30, 30, 35), (90, 90, 95), (160, 140, 100), (70, 55, 40)]
_SKIN: list[RGB] = [(230, 190, 160), (205, 155, 115), (160, 110, 75), (100, 70, 50)]
_HAIR: list[RGB] = [(25, 20, 18), (70, 45, 30), (190, 160, 100), (150, 150, 150)]
_TYRE: RGB = (22, 22, 24)


@dataclass(frozen=True)
class _VehiclePaint:
    body: Array
    cargo: Array
    accent: Array
    window: Array
    hub: Array


def _vehicle_paint(rng: np.random.Generator, kind: str) -> _VehiclePaint:
    palette = {"Car": _CAR_COLORS, "Van": _VAN_COLORS, "Truck": _CAR_COLORS[:8],
               "Tram": _TRAM_COLORS}[kind]
    body = _pick(rng, palette)
    return _VehiclePaint(body=body, cargo=_pick(rng, _TRUCK_CARGO), accent=_pick(rng, _TRAM_COLORS),
                         window=_color(rng, (45, 55, 70), 12) * float(rng.uniform(0.7, 1.4)),
                         hub=_color(rng, (150, 150, 155), 20))


def _car_side(p: _Patch, f: _Face, c: _VehiclePaint, joined: float | None = None) -> None:
    """Side view; ``joined`` (0 rear, 1 front) is the end next to a visible end face, where
    the roof runs on to that face so the two faces read as one body."""
    top, bottom = [0.30, 0.68], [0.14, 0.82]
    glass_top, glass_bottom = [0.33, 0.65], [0.19, 0.77]
    if joined == 0.0:
        top[0], bottom[0], glass_top[0], glass_bottom[0] = 0.0, 0.0, 0.06, 0.06
    elif joined == 1.0:
        top[1], bottom[1], glass_top[1], glass_bottom[1] = 1.0, 1.0, 0.94, 0.94
    p.paint(f.rect(0.0, 1.0, 0.40, 0.86), c.body)
    p.paint(f.trapezoid(0.04, 0.41, tuple(top), tuple(bottom)), c.body)
    glass = f.trapezoid(0.09, 0.38, tuple(glass_top), tuple(glass_bottom)) & ~f.rect(0.46, 0.50, 0, 1)
    p.paint(glass, c.window)
    p.paint(f.rect(0.0, 0.035, 0.46, 0.56), (190, 25, 25))
    p.paint(f.rect(0.965, 1.0, 0.46, 0.54), (235, 235, 210))
    for a in (0.19, 0.81):
        tyre, hub = f.wheel(a, 0.32)
        p.paint(tyre, _TYRE)
        p.paint(hub, c.hub)


def _car_end(p: _Patch, f: _Face, c: _VehiclePaint, rear: bool) -> None:
    p.paint(f.rect(0.0, 1.0, 0.40, 0.86), c.body)
    p.paint(f.trapezoid(0.05, 0.41, (0.16, 0.84), (0.04, 0.96)), c.body)
    p.paint(f.trapezoid(0.09, 0.37, (0.20, 0.80), (0.10, 0.90)), c.window)
    light = (200, 20, 20) if rear else (235, 235, 210)
    p.paint(f.rect(0.03, 0.2, 0.47, 0.56), light)
    p.paint(f.rect(0.8, 0.97, 0.47, 0.56), light)
    p.paint(f.rect(0.38, 0.62, 0.6, 0.68), (225, 225, 225))
    p.paint(f.rect(0.0, 1.0, 0.74, 0.84), c.body * 0.55)
    p.paint(f.rect(0.05, 0.2, 0.84, 1.0) | f.rect(0.8, 0.95, 0.84, 1.0), _TYRE)


def _van_side(p: _Patch, f: _Face, c: _VehiclePaint) -> None:
    nose = f.inside & (f.a >= 0.84) & (f.b >= 0.06 + (f.a - 0.84) * 2.0) & (f.b < 0.87)
    p.paint(f.rect(0.0, 0.84, 0.06, 0.87) | nose, c.body)
    for a0, a1 in ((0.05, 0.28), (0.32, 0.56), (0.60, 0.80)):
        p.paint(f.rect(a0, a1, 0.14, 0.38), c.window)
    shield = f.inside & (f.a >= 0.85) & (f.a < 0.97) & (f.b >= 0.1 + (f.a - 0.84) * 2.0) & (f.b < 0.4)
    p.paint(shield, c.window)
    for a in (0.16, 0.84):
        tyre, hub = f.wheel(a, 0.34)
        p.paint(tyre, _TYRE)
        p.paint(hub, c.hub)


def _van_end(p: _Patch, f: _Face, c: _VehiclePaint, rear: bool) -> None:
    p.paint(f.rect(0.0, 1.0, 0.05, 0.86), c.body)
    p.paint(f.rect(0.07, 0.93, 0.12, 0.42) & ~f.rect(0.485, 0.515, 0, 1), c.window)
    light = (200, 20, 20) if rear else (235, 235, 210)
    p.paint(f.rect(0.02, 0.14, 0.50, 0.64) | f.rect(0.86, 0.98, 0.50, 0.64), light)
    p.paint(f.rect(0.0, 1.0, 0.76, 0.86), c.body * 0.5)
    p.paint(f.rect(0.05, 0.2, 0.86, 1.0) | f.rect(0.8, 0.95, 0.86, 1.0), _TYRE)


def _truck_side(p: _Patch, f: _Face, c: _VehiclePaint) -> None:
    p.paint(f.rect(0.0, 0.78, 0.0, 0.80), c.cargo)
    p.paint(f.rect(0.0, 0.78, 0.0, 0.025) | f.rect(0.0, 0.78, 0.77, 0.80), c.cargo * 0.7)
    p.paint(f.rect(0.80, 1.0, 0.30, 0.86), c.body)
    p.paint(f.rect(0.84, 0.97, 0.36, 0.56), c.window)
    p.paint(f.rect(0.0, 1.0, 0.80, 0.87), (40, 40, 42))
    for a in (0.10, 0.22, 0.88):
        tyre, hub = f.wheel(a, 0.5)
        p.paint(tyre, _TYRE)
        p.paint(hub, c.hub)


def _truck_end(p: _Patch, f: _Face, c: _VehiclePaint, rear: bool) -> None:
    if rear:
        p.paint(f.rect(0.0, 1.0, 0.0, 0.82), c.cargo)
        p.paint(f.rect(0.49, 0.51, 0.02, 0.8) | f.rect(0.0, 1.0, 0.0, 0.02), c.cargo * 0.6)
        p.paint(f.rect(0.02, 0.14, 0.84, 0.89) | f.rect(0.86, 0.98, 0.84, 0.89), (200, 20, 20))
    else:
        p.paint(f.rect(0.04, 0.96, 0.0, 0.3), c.cargo)
        p.paint(f.rect(0.0, 1.0, 0.28, 0.88), c.body)
        p.paint(f.rect(0.08, 0.92, 0.33, 0.55), c.window)
        p.paint(f.rect(0.3, 0.7, 0.64, 0.78), (40, 40, 42))
        p.paint(f.rect(0.06, 0.2, 0.7, 0.78) | f.rect(0.8, 0.94, 0.7, 0.78), (235, 235, 210))
    p.paint(f.rect(0.0, 1.0, 0.82, 0.88), (40, 40, 42))
    p.paint(f.rect(0.04, 0.22, 0.86, 1.0) | f.rect(0.78, 0.96, 0.86, 1.0), _TYRE)


def _tram_side(p: _Patch, f: _Face, c: _VehiclePaint) -> None:
    p.paint(f.rect(0.0, 1.0, 0.08, 0.9), c.body)
    p.paint(f.rect(0.0, 1.0, 0.62, 0.71), c.accent)
    windows = f.rect(0.02, 0.98, 0.2, 0.52) & (np.abs(_frac(f.a * 9.0) - 0.5) < 0.38)
    p.paint(windows, c.window)
    p.paint(f.rect(0.3, 0.36, 0.2, 0.86) | f.rect(0.64, 0.70, 0.2, 0.86), c.window * 0.8)
    p.paint(f.rect(0.42, 0.58, 0.0, 0.02) | f.rect(0.49, 0.51, 0.0, 0.08), (40, 40, 42))
    p.paint(f.rect(0.08, 0.24, 0.9, 1.0) | f.rect(0.76, 0.92, 0.9, 1.0), (35, 35, 37))


def _tram_end(p: _Patch, f: _Face, c: _VehiclePaint, rear: bool) -> None:
    p.paint(f.rect(0.03, 0.97, 0.08, 0.92), c.body)
    p.paint(f.rect(0.03, 0.97, 0.62, 0.71), c.accent)
    p.paint(f.rect(0.1, 0.9, 0.18, 0.5), c.window)
    p.paint(f.rect(0.25, 0.75, 0.095, 0.15), (30, 30, 30))
    light = (200, 20, 20) if rear else (235, 235, 210)
    p.paint(f.rect(0.1, 0.22, 0.74, 0.8) | f.rect(0.78, 0.9, 0.74, 0.8), light)
    p.paint(f.rect(0.42, 0.58, 0.0, 0.02) | f.rect(0.49, 0.51, 0.0, 0.08), (40, 40, 42))
    p.paint(f.rect(0.1, 0.9, 0.92, 1.0), (35, 35, 37))


_SIDE_DRAWERS: dict[str, Callable[[_Patch, _Face, _VehiclePaint], None]] = {
    "Car": _car_side, "Van": _van_side, "Truck": _truck_side, "Tram": _tram_side}
_END_DRAWERS: dict[str, Callable[[_Patch, _Face, _VehiclePaint, bool], None]] = {
    "Car": _car_end, "Van": _van_end, "Truck": _truck_end, "Tram": _tram_end}


def _draw_far_vehicle(p: _Patch, u: Array, v: Array, kind: str, c: _VehiclePaint) -> None:
    """A few-pixel vehicle: body, glass band and dark wheel row (details would not show)."""
    top = 0.42 if kind == "Car" else 0.05
    p.paint((v >= top) & (v < 0.86), c.cargo if kind == "Truck" else c.body)
    if kind == "Car":
        p.paint((v >= 0.05) & (v < top) & (np.abs(u - 0.5) < 0.38), c.window)
    else:
        p.paint((v >= 0.18) & (v < 0.45) & (np.abs(u - 0.5) < 0.44), c.window)
    p.paint((v >= 0.86) & ((u < 0.3) | (u > 0.7)), _TYRE)


def _draw_vehicle(rng: np.random.Generator, p: _Patch, kind: str, dims: tuple[float, float, float],
                  alpha: float) -> None:
    """A vehicle seen at observation angle ``alpha``: a side face and an end face side by side.

    The side face's share of the box width is ``l |cos a| / (l |cos a| + w |sin a|)``; the end
    face is the rear when ``sin a < 0`` and lies left when ``sin a cos a < 0``.
    """
    h, w, l = dims
    ca, sa = math.cos(alpha), math.sin(alpha)
    side_share = l * abs(ca) / max(l * abs(ca) + w * abs(sa), 1e-6)
    if sa * ca < 0:
        end_range, side_range = (0.0, 1.0 - side_share), (1.0 - side_share, 1.0)
    else:
        side_range, end_range = (0.0, side_share), (side_share, 1.0)
    paint = _vehicle_paint(rng, kind)
    u = p.xs / p.fw
    v = p.ys / p.fh
    if p.fh < LOW_DETAIL_PX:
        _draw_far_vehicle(p, u, v, kind, paint)
        return
    s0, s1 = side_range
    if s1 - s0 > 0.03:
        a = (u - s0) / (s1 - s0)
        face = _Face(a if ca >= 0 else 1.0 - a, v, (u >= s0) & (u < s1), l, h)
        if kind == "Car" and end_range[1] - end_range[0] > 0.15:
            _car_side(p, face, paint, joined=0.0 if sa < 0 else 1.0)
        else:
            _SIDE_DRAWERS[kind](p, face, paint)
    e0, e1 = end_range
    if e1 - e0 > 0.03:
        end_face = _Face((u - e0) / (e1 - e0), v, (u >= e0) & (u < e1), w, h)
        _END_DRAWERS[kind](p, end_face, paint, sa < 0)
        if s1 - s0 > 0.03:  # the two faces are lit differently
            p.color[:, end_face.inside[0]] *= float(rng.uniform(0.78, 0.95))
    p.shade(1.1, 0.85)
    p.color *= float(rng.uniform(0.85, 1.1))


def _person_colors(rng: np.random.Generator) -> tuple[Array, Array, Array, Array]:
    """(skin, hair, top, trousers) colours."""
    return _pick(rng, _SKIN, 8), _pick(rng, _HAIR, 10), _pick(rng, _CLOTHES, 20), _pick(rng, _TROUSERS, 15)


def _draw_head(p: _Patch, x: Array, y: Array, center: tuple[float, float], radius: float,
               skin: Array, hair: Array, face: float) -> None:
    """Head of ``radius`` (height units) with hair on top and at the back (``face``: +-1/0)."""
    head = _ellipse(x, y, center[0], center[1], radius * 0.85, radius)
    p.paint(head, skin)
    p.paint(head & ((y < center[1] - 0.25 * radius) | ((x - center[0]) * face < -0.3 * radius)), hair)


def _draw_pedestrian(rng: np.random.Generator, p: _Patch, alpha: float) -> None:
    """An upright walking figure; ``x, y`` in units of the frame height, x from the centre."""
    x, y = (p.xs - p.fw / 2) / p.fh, p.ys / p.fh
    prof, face = abs(math.cos(alpha)), (1.0 if math.cos(alpha) >= 0 else -1.0)
    skin, hair, top, trousers = _person_colors(rng)
    torso = 0.095 - 0.035 * prof
    stride = (0.02 + 0.11 * float(rng.uniform(0.2, 1.0))) * prof
    for s in (-1.0, 1.0):
        hip = (s * 0.045 * (1 - 0.7 * prof), 0.52)
        foot = (s * (0.055 * (1 - prof) + stride), 0.965)
        p.paint(_segment(x, y, hip, foot, 0.042), trousers)
        p.paint(_ellipse(x, y, foot[0] + face * 0.02 * prof, 0.975, 0.045, 0.025), (30, 28, 26))
    if rng.random() < 0.25:  # skirt or long coat
        p.paint((np.abs(x) < torso + (y - 0.4) * 0.25) & (y >= 0.16) & (y < 0.72), top)
    p.paint((np.abs(x) < torso) & (y >= 0.16) & (y < 0.56), top)
    for s in (-1.0, 1.0):
        shoulder = (s * (torso - 0.02) * (1 - prof), 0.2)
        hand = (s * (torso + 0.03) * (1 - prof) + s * stride * 0.7, 0.5)
        p.paint(_segment(x, y, shoulder, hand, 0.028), top * 0.9)
        p.paint(_ellipse(x, y, hand[0], hand[1] + 0.02, 0.025, 0.025), skin)
    if rng.random() < 0.3:  # backpack or bag
        bag_x = -face * (torso + 0.03) if prof > 0.5 else 0.12 * float(rng.choice([-1, 1]))
        p.paint(_ellipse(x, y, bag_x, 0.38, 0.045, 0.09), _pick(rng, _CLOTHES, 15) * 0.8)
    _draw_head(p, x, y, (0.01 * face * prof, 0.085), 0.068, skin, hair, face * prof)
    p.shade(1.05, 0.9)


def _draw_person_sitting(rng: np.random.Generator, p: _Patch, alpha: float) -> None:
    """A seated figure (on a bench or stool): bent legs, shorter and wider than a pedestrian."""
    x, y = (p.xs - p.fw / 2) / p.fh, p.ys / p.fh
    prof, face = abs(math.cos(alpha)), (1.0 if math.cos(alpha) >= 0 else -1.0)
    skin, hair, top, trousers = _person_colors(rng)
    body_x = -face * 0.08 * prof
    if rng.random() < 0.7:
        seat = _pick(rng, [(110, 80, 50), (90, 90, 95), (60, 110, 70)], 12)
        half = 0.28 - 0.12 * prof
        p.paint((np.abs(x - body_x) < half) & (y >= 0.6) & (y < 0.66), seat)
        legs = (np.abs(np.abs(x - body_x) - (half - 0.03)) < 0.02) & (y >= 0.66)
        p.paint(legs, seat * 0.7)
    for s in (-1.0, 1.0):
        hip = (body_x + s * 0.05 * (1 - prof), 0.6)
        knee = (body_x + face * 0.26 * prof + s * 0.1 * (1 - prof), 0.6 + 0.06 * (1 - prof))
        foot = (knee[0] + face * 0.03 * prof, 0.96)
        p.paint(_segment(x, y, hip, knee, 0.06), trousers)
        p.paint(_segment(x, y, knee, foot, 0.045), trousers)
        p.paint(_ellipse(x, y, foot[0] + face * 0.03 * prof, 0.965, 0.05, 0.03), (30, 28, 26))
    torso = 0.13 - 0.05 * prof
    p.paint((np.abs(x - body_x) < torso) & (y >= 0.2) & (y < 0.62), top)
    for s in (-1.0, 1.0):
        shoulder = (body_x + s * (torso - 0.03) * (1 - prof), 0.25)
        hand = (body_x + face * 0.16 * prof + s * 0.12 * (1 - prof), 0.55)
        p.paint(_segment(x, y, shoulder, hand, 0.035), top * 0.9)
    _draw_head(p, x, y, (body_x + 0.01 * face * prof, 0.11), 0.095, skin, hair, face * prof)
    p.shade(1.05, 0.9)


def _draw_cyclist(rng: np.random.Generator, p: _Patch, alpha: float) -> None:
    """A rider over a bicycle; in profile two wheels, end-on a single thin wheel."""
    x, y = (p.xs - p.fw / 2) / p.fh, p.ys / p.fh
    prof, face = abs(math.cos(alpha)), (1.0 if math.cos(alpha) >= 0 else -1.0)
    skin, hair, top, trousers = _person_colors(rng)
    frame_col = _pick(rng, [(30, 30, 30), (180, 30, 30), (40, 70, 150), (200, 200, 200), (40, 120, 60)])
    r, half_base = 0.2, 0.3 * prof
    rx = max(r * prof, 0.035)
    hubs = [(-face * half_base, 1.0 - r), (face * half_base, 1.0 - r)]
    for hx, hy in (hubs if prof > 0.12 else hubs[:1]):
        outer = _ellipse(x, y, hx, hy, rx, r)
        inner = (_ellipse(x, y, hx, hy, max(rx - 0.03, 1e-3), r - 0.03) if prof > 0.3
                 else np.zeros((1, 1), bool))
        p.paint(outer & ~inner, _TYRE)
    bracket = (0.0, 1.0 - r)
    seat = (-face * 0.08 * prof, 0.5)
    head_tube = (face * 0.22 * prof, 0.47)
    for a, b in ((hubs[0], bracket), (bracket, seat), (seat, hubs[0]), (bracket, head_tube),
                 (seat, head_tube), (head_tube, hubs[1])):
        p.paint(_segment(x, y, a, b, 0.016), frame_col)
    bar = 0.14 * (1 - prof) + 0.02
    p.paint(_segment(x, y, (head_tube[0] - bar, 0.45), (head_tube[0] + bar, 0.45), 0.014), (30, 30, 30))
    phase = float(rng.uniform(0, 2 * math.pi))
    shoulder = (face * 0.1 * prof, 0.2)
    for s, ph in ((-1.0, phase), (1.0, phase + math.pi)):
        pedal = (0.09 * math.cos(ph) * prof + s * 0.06 * (1 - prof), 1.0 - r + 0.09 * math.sin(ph))
        knee = (face * 0.12 * prof + s * 0.08 * (1 - prof), 0.62 + 0.04 * math.sin(ph))
        p.paint(_segment(x, y, (seat[0] + s * 0.04 * (1 - prof), 0.48), knee, 0.04), trousers)
        p.paint(_segment(x, y, knee, pedal, 0.032), trousers)
        hand = (head_tube[0] + s * bar, 0.44)
        p.paint(_segment(x, y, (shoulder[0] + s * 0.07 * (1 - prof), 0.22), hand, 0.026), top * 0.9)
    p.paint(_segment(x, y, (seat[0], 0.46), shoulder, 0.06 + 0.03 * (1 - prof)), top)
    head = (face * 0.14 * prof, 0.085)
    _draw_head(p, x, y, head, 0.068, skin, hair, face * prof)
    if rng.random() < 0.5:  # helmet
        p.paint(_ellipse(x, y, head[0], head[1] - 0.01, 0.066, 0.06) & (y < head[1]),
                _pick(rng, _CLOTHES, 10))
    p.shade(1.05, 0.9)


def _draw_misc(rng: np.random.Generator, p: _Patch) -> None:
    """An odd object: trailer, container, crate stack or road-work barrier."""
    u, v = p.xs / p.fw, p.ys / p.fh
    kind = int(rng.integers(4))
    color = _pick(rng, _CLOTHES + _TRUCK_CARGO, 20)
    if kind == 0:  # trailer
        p.paint((v >= 0.12) & (v < 0.74) & (u >= 0.0) & (u < 0.88), color)
        p.paint((v >= 0.74) & (v < 0.8) & (u < 1.0), (40, 40, 42))
        wx = (p.xs - 0.45 * p.fw) / p.fh
        p.paint(_ellipse(wx, v, 0.0, 0.86, 0.14, 0.14), _TYRE)
    elif kind == 1:  # container / big bin
        p.paint((v >= 0.1) & (u >= 0.04) & (u < 0.96), color)
        p.paint((_frac(u * 7.0) < 0.12) & (v >= 0.1) & (u >= 0.04) & (u < 0.96), color * 0.7)
        p.paint((v < 0.12) & (u < 1.0), color * 0.6)
    elif kind == 2:  # stacked crates
        wood = _color(rng, (150, 110, 65), 20)
        rows, cols = int(rng.integers(2, 4)), int(rng.integers(2, 5))
        in_cell = (_frac(u * cols) > 0.06) & (_frac(v * rows) > 0.06)
        top_row = np.floor(v * rows) >= rows - 1 - np.floor(u * cols) % rows
        p.paint(in_cell & top_row, wood)
    else:  # road-work barrier
        stripes = _frac((p.xs + p.ys) / max(0.25 * p.fh, 1.0)) < 0.5
        board = (v >= 0.25) & (v < 0.55)
        p.paint(board & stripes, (210, 30, 30))
        p.paint(board & ~stripes, (235, 235, 230))
        p.paint(((np.abs(u - 0.1) < 0.03) | (np.abs(u - 0.9) < 0.03)) & (v >= 0.55), (60, 60, 60))
    p.shade(1.08, 0.88)


def _draw_object(rng: np.random.Generator, p: _Patch, kind: str, dims: tuple[float, float, float],
                 alpha: float) -> None:
    if kind in _VEHICLES:
        _draw_vehicle(rng, p, kind, dims, alpha)
    elif kind == "Pedestrian":
        _draw_pedestrian(rng, p, alpha)
    elif kind == "Person_sitting":
        _draw_person_sitting(rng, p, alpha)
    elif kind == "Cyclist":
        _draw_cyclist(rng, p, alpha)
    else:
        _draw_misc(rng, p)


# --------------------------------------------------------------------------------------------
# Object placement
# --------------------------------------------------------------------------------------------
def _box_corners(dims: tuple[float, float, float], loc: tuple[float, float, float], ry: float) -> Array:
    """``[3, 8]`` corners of a KITTI 3D box (bottom centre ``loc``, yaw ``ry``)."""
    h, w, l = dims
    xs = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2
    ys = np.array([0, 0, 0, 0, -1, -1, -1, -1]) * h
    zs = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    c, s = math.cos(ry), math.sin(ry)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return rot @ np.stack([xs, ys, zs]) + np.asarray(loc)[:, None]


def _lateral_and_yaw(rng: np.random.Generator, kind: str, road: _Road) -> tuple[float, float]:
    """Camera x and yaw for an object of ``kind`` (right-hand traffic)."""
    side = float(rng.choice([-1.0, 1.0]))
    away, toward = -math.pi / 2, math.pi / 2
    walk = road.half_width + float(rng.uniform(0.4, road.sidewalk - 0.2))
    on_road = road.center + float(rng.uniform(-road.half_width, road.half_width))
    any_yaw = float(rng.uniform(-math.pi, math.pi))
    if kind in ("Car", "Van", "Truck"):
        r = rng.random()
        if r < 0.6 or (r < 0.9 and road.parking == 0):
            x = road.lane_center(int(rng.integers(road.lanes))) + float(rng.normal(0, 0.25))
            return x, (away if x > road.center else toward) + float(rng.normal(0, 0.05))
        if r < 0.9:
            x = road.center + side * (road.half_width - 1.1)
            return x, float(rng.choice([away, toward])) + float(rng.normal(0, 0.05))
        return on_road, any_yaw
    if kind == "Tram":
        x = road.center + side * 1.6
        return x, (away if side > 0 else toward)
    if kind == "Pedestrian":
        if rng.random() < 0.75:
            return road.center + side * walk, any_yaw
        return on_road, any_yaw
    if kind == "Person_sitting":
        return road.center + side * walk, any_yaw
    if kind == "Cyclist":
        if rng.random() < 0.65:
            x = road.center + side * (road.half_width - float(rng.uniform(0.5, 1.5)))
            return x, (away if side > 0 else toward) + float(rng.normal(0, 0.15))
        reach = road.half_width + road.sidewalk
        return road.center + float(rng.uniform(-reach, reach)), any_yaw
    x = road.center + side * (walk if rng.random() < 0.5 else road.half_width - 1.0)
    return x, float(rng.choice([away, toward])) + float(rng.normal(0, 0.3))


def _footprint(dims: tuple[float, float, float], loc: tuple[float, float, float],
               ry: float) -> tuple[float, float, float, float]:
    """Axis-aligned ground footprint ``x0, z0, x1, z1`` of the rotated 3D box."""
    _, w, l = dims
    ex = abs(l * math.cos(ry)) / 2 + abs(w * math.sin(ry)) / 2
    ez = abs(l * math.sin(ry)) / 2 + abs(w * math.cos(ry)) / 2
    return loc[0] - ex, loc[2] - ez, loc[0] + ex, loc[2] + ez


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float],
              margin: float = 0.3) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _place(rng: np.random.Generator, kind: str, cam: _Camera, road: _Road, z_range: tuple[float, float],
           taken: list[tuple[float, float, float, float]],
           ) -> tuple[_Dims, _Vec3, float, _Box] | None:
    """Sample a non-colliding 3D pose whose projected frame box has a plausible size.

    Returns ``(dims, location, rotation_y, frame)`` or None after 12 failed tries.
    """
    spec = _CLASSES[kind]
    for _ in range(12):
        scale = np.clip(1.0 + spec.jitter * rng.standard_normal(3), 0.7, 1.4)
        dims = tuple(float(m * s) for m, s in zip(spec.dims, scale))
        x, ry = _lateral_and_yaw(rng, kind, road)
        z_min, z_max = z_range
        z = z_min + (z_max - z_min) * float(rng.random()) ** 1.3
        if kind != "Tram" and rng.random() < EDGE_FRACTION:  # near object cut by a side border
            z = z_min + float(rng.uniform(0.0, 6.0))
            edge_x = float(rng.choice([-1.0, 1.0])) * z * cam.cx / cam.f * float(rng.uniform(0.9, 1.2))
            if abs(edge_x - road.center) < road.half_width + road.sidewalk + 1.5:
                x = edge_x
        loc = (x, CAMERA_HEIGHT + float(rng.normal(0, 0.03)), z)
        corners = _box_corners(dims, loc, ry)
        if corners[2].min() < 1.0:
            continue
        uv = cam.project(corners)
        frame = (float(uv[0].min()), float(uv[1].min()), float(uv[0].max()), float(uv[1].max()))
        tall = frame[3] - frame[1]
        visible = frame[2] > 2 and frame[0] < cam.width - 2
        if not visible or not MIN_BOX_HEIGHT * cam.height <= tall <= MAX_BOX_HEIGHT * cam.height:
            continue
        foot = _footprint(dims, loc, ry)
        if any(_overlaps(foot, other) for other in taken):
            continue
        return dims, loc, _wrap_angle(ry), frame
    return None


def _plan_objects(rng: np.random.Generator, cam: _Camera, road: _Road) -> list[_Planned]:
    """Place and render the labelled objects of one scene (not yet composited)."""
    names = list(_CLASSES)
    weights = np.array([_CLASSES[n].weight for n in names])
    count = min(2 + int(rng.poisson(5.5)), 16)
    planned: list[_Planned] = []
    taken: list[tuple[float, float, float, float]] = []
    for _ in range(count):
        kind = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        spec = _CLASSES[kind]
        z_min = max(4.5 * spec.dims[0], 5.0)
        placed = _place(rng, kind, cam, road, (z_min, max(spec.z_max, z_min + 5)), taken)
        if placed is None:
            continue
        dims, loc, ry, frame = placed
        taken.append(_footprint(dims, loc, ry))
        alpha = _wrap_angle(ry - math.atan2(loc[0], loc[2]))
        patch = _Patch.for_frame(frame)
        _draw_object(rng, patch, kind, dims, alpha)
        planned.append(_Planned(kind, dims, loc, ry, alpha, patch))
    return planned


# --------------------------------------------------------------------------------------------
# Visibility, truncation and labels
# --------------------------------------------------------------------------------------------
def _trim_border_contact(p: _Patch, width: int, height: int) -> None:
    """Clear mask pixels on an image border line the object touches without crossing it.

    So a box touches the image border exactly when the object is truncated there.
    """
    rows, cols = np.nonzero(p.mask.any(axis=1))[0], np.nonzero(p.mask.any(axis=0))[0]
    if rows.size == 0:
        return
    top, bottom = p.r0 + rows[0], p.r0 + rows[-1]
    left, right = p.c0 + cols[0], p.c0 + cols[-1]
    if left == 0:
        p.mask[:, -p.c0] = False
    if right == width - 1:
        p.mask[:, width - 1 - p.c0] = False
    if top == 0:
        p.mask[-p.r0, :] = False
    if bottom == height - 1:
        p.mask[height - 1 - p.r0, :] = False


def _mask_box(p: _Patch) -> tuple[float, float, float, float] | None:
    """Tight unclipped box of the patch mask, or None when empty."""
    rows, cols = np.nonzero(p.mask.any(axis=1))[0], np.nonzero(p.mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    return (float(p.c0 + cols[0]), float(p.r0 + rows[0]), float(p.c0 + cols[-1] + 1),
            float(p.r0 + rows[-1] + 1))


def _in_image(p: _Patch, width: int, height: int) -> tuple[slice, slice, slice, slice] | None:
    """(image rows, image cols, patch rows, patch cols) slices of the patch's in-image part."""
    r0, c0 = max(p.r0, 0), max(p.c0, 0)
    r1, c1 = min(p.r0 + p.mask.shape[0], height), min(p.c0 + p.mask.shape[1], width)
    if r1 <= r0 or c1 <= c0:
        return None
    return slice(r0, r1), slice(c0, c1), slice(r0 - p.r0, r1 - p.r0), slice(c0 - p.c0, c1 - p.c0)


def _truncation(full: tuple[float, float, float, float], clipped: tuple[float, float, float, float]) -> float:
    """Fraction of ``full``'s area outside the image, rounded up to the next 0.01."""
    area = (full[2] - full[0]) * (full[3] - full[1])
    inside = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])
    frac = 1.0 - inside / area
    return min(math.ceil(frac * 100.0 - 1e-6) / 100.0, 1.0) if frac > 1e-9 else 0.0


def _resolve_visibility(planned: list[_Planned], width: int,
                        height: int) -> tuple[list[tuple[_Planned, SceneObject]], Array]:
    """Near-to-far pass: occlusion by nearer kept objects, drop (near) invisible objects.

    Dropped objects are neither drawn nor labelled; dropping only frees farther objects, so a
    single near-to-far pass is consistent. Also returns the ``[H, W]`` mask of the pixels the
    kept objects cover.
    """
    covered = np.zeros((height, width), bool)
    kept = []
    min_height = max(4.0, 0.022 * height)
    for obj in sorted(planned, key=lambda o: o.location[2]):
        p = obj.patch
        _trim_border_contact(p, width, height)
        full = _mask_box(p)
        where = _in_image(p, width, height)
        if full is None or where is None:
            continue
        ir, ic, pr, pc = where
        visible = p.mask[pr, pc]
        n_visible = int(visible.sum())
        clipped = (max(full[0], 0.0), max(full[1], 0.0),
                   min(full[2], float(width)), min(full[3], float(height)))
        if n_visible < 12 or clipped[3] - clipped[1] < min_height or clipped[2] - clipped[0] < 3:
            continue
        hidden = int((covered[ir, ic] & visible).sum()) / n_visible
        truncated = _truncation(full, clipped)
        if hidden > MAX_OCCLUSION or truncated > 0.85:
            continue
        covered[ir, ic] |= visible
        occluded = 0 if hidden < 0.1 else (1 if hidden < 0.5 else 2)
        label = SceneObject(
            type=obj.type, box=clipped, truncated=truncated, occluded=occluded, alpha=obj.alpha,
            dims=obj.dims, location=obj.location, rotation_y=obj.rotation_y, occluded_fraction=hidden)
        kept.append((obj, label))
    return kept, covered


def _draw_shadow(canvas: Array, box: tuple[float, float, float, float], sun: float, strength: float) -> None:
    """Darken an ellipse on the ground under ``box`` (before the object itself is drawn)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + sun * w, y2 - 0.01 * h
    rx, ry = 0.6 * w + 1.0, 0.05 * h + 1.0
    r0, r1 = max(int(cy - ry), 0), min(int(math.ceil(cy + ry)) + 1, canvas.shape[1])
    c0, c1 = max(int(cx - rx), 0), min(int(math.ceil(cx + rx)) + 1, canvas.shape[2])
    if r1 <= r0 or c1 <= c0:
        return
    v = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    u = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
    d = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2
    dark = 1.0 - strength * np.clip(1.3 - d, 0.0, 1.0)
    canvas[:, r0:r1, c0:c1] *= np.minimum(dark, 1.0)[None]


def _composite(canvas: Array, p: _Patch) -> None:
    _blend_into(canvas, p.r0, p.c0, p.mask, p.color)


def _dontcare_clusters(rng: np.random.Generator, canvas: Array, cam: _Camera, road: _Road) -> list[Array]:
    """Draw 0..3 clusters of far-away cars or people; returns each cluster's ``[H, W]`` pixel mask."""
    clusters = []
    for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
        people = rng.random() < 0.3
        kind = "Pedestrian" if people else "Car"
        z = float(rng.uniform(70.0, 110.0) if people else rng.uniform(95.0, 170.0))
        x0 = road.center + (float(rng.choice([-1, 1])) * (road.half_width + 1.0) if people
                            else float(rng.uniform(-road.half_width + 1.5, road.half_width - 1.5)))
        pixels = np.zeros((cam.height, cam.width), bool)
        for i in range(int(rng.integers(2, 5))):
            dims = _CLASSES[kind].dims
            loc = (x0 + i * (0.8 if people else 2.2) * float(rng.uniform(0.9, 1.3)), CAMERA_HEIGHT,
                   z + float(rng.uniform(-4, 4)))
            ry = -math.pi / 2 if loc[0] > road.center else math.pi / 2
            uv = cam.project(_box_corners(dims, loc, ry))
            frame = (float(uv[0].min()), float(uv[1].min()), float(uv[0].max()), float(uv[1].max()))
            if frame[3] - frame[1] < 1.5:
                continue
            p = _Patch.for_frame(frame)
            _draw_object(rng, p, kind, dims, _wrap_angle(ry - math.atan2(loc[0], loc[2])))
            where = _in_image(p, cam.width, cam.height)
            if where is None:
                continue
            _composite(canvas, p)
            ir, ic, pr, pc = where
            pixels[ir, ic] |= p.mask[pr, pc]
        clusters.append(pixels)
    return clusters


def _dontcare_labels(clusters: list[Array], covered: Array) -> list[SceneObject]:
    """One DontCare region per cluster: the box (padded by 1 px) of its pixels left visible
    after the labelled objects were drawn; clusters hidden almost entirely get none."""
    height, width = covered.shape
    regions = []
    for pixels in clusters:
        visible = pixels & ~covered
        if int(visible.sum()) < 6:
            continue
        rows, cols = np.nonzero(visible.any(axis=1))[0], np.nonzero(visible.any(axis=0))[0]
        x1, y1 = max(float(cols[0]) - 1, 0.0), max(float(rows[0]) - 1, 0.0)
        x2, y2 = min(float(cols[-1]) + 2, float(width)), min(float(rows[-1]) + 2, float(height))
        if x2 - x1 >= 3 and y2 - y1 >= 3:
            regions.append(SceneObject(type="DontCare", box=(x1, y1, x2, y2)))
    return regions


def _gaussian_table() -> Array:
    """256 standard-normal quantiles: a byte of random bits -> one Gaussian noise sample."""
    from statistics import NormalDist
    normal = NormalDist()
    return np.array([normal.inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)


_GAUSSIAN = _gaussian_table()


def _finish(rng: np.random.Generator, canvas: Array, style: _Style) -> Array:
    """Global lighting, vignetting, slight lens blur and sensor noise -> ``[H, W, 3]`` uint8.

    ``canvas`` is planar ``[3, H, W]`` float32.
    """
    _, H, W = canvas.shape
    gain = style.gains * np.float32(style.brightness)
    mean = float((canvas.mean(axis=(1, 2)) * gain).mean())
    u = (np.arange(W, dtype=np.float32) + 0.5) / W * 2.0 - 1.0
    vignette = (1.0 - 0.18 * u * u)[None, None, :]
    img = canvas * (gain * np.float32(style.contrast))[:, None, None] * vignette
    img += np.float32(mean * (1.0 - style.contrast)) * vignette
    out = img * np.float32(0.5)
    out[:, 1:-1, 1:-1] += np.float32(0.125) * (img[:, :-2, 1:-1] + img[:, 2:, 1:-1]
                                               + img[:, 1:-1, :-2] + img[:, 1:-1, 2:])
    out[:, 0], out[:, -1], out[:, :, 0], out[:, :, -1] = img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]
    bits = np.frombuffer(rng.bytes(H * W), np.uint8).reshape(H, W)
    out += np.take(_GAUSSIAN, bits) * np.float32(style.noise)
    np.clip(out, 0.0, 255.0, out=out)
    out += 0.5
    return np.ascontiguousarray(out.astype(np.uint8).transpose(1, 2, 0))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def _check_size(width: int, height: int) -> None:
    if int(width) != width or int(height) != height:
        raise ValueError(f"synthetic scenes: width and height must be integers, got {width!r} x {height!r}")
    if width < MIN_IMAGE_SIZE or height < MIN_IMAGE_SIZE:
        raise ValueError(
            f"synthetic scenes: image size {width}x{height} is too small; width and height must "
            f"each be at least {MIN_IMAGE_SIZE} pixels")


def render_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[SceneObject]]:
    """Render one road scene.

    Returns the ``[height, width, 3]`` uint8 RGB image and its objects: the labelled objects
    (near to far) followed by the DontCare regions. Boxes are x1,y1,x2,y2 pixels in the image.
    Raises ValueError for an image smaller than 64x64.
    """
    _check_size(width, height)
    cam = _make_camera(rng, int(width), int(height))
    road = _make_road(rng)
    style = _make_style(rng)
    canvas = _draw_sky_and_ground(rng, cam, road, style)
    free = _draw_buildings(rng, canvas, cam, road, style)
    _draw_trees_and_poles(rng, canvas, cam, road, free)
    clusters = _dontcare_clusters(rng, canvas, cam, road)
    kept, covered = _resolve_visibility(_plan_objects(rng, cam, road), cam.width, cam.height)
    dontcare = _dontcare_labels(clusters, covered)
    shadow = float(rng.uniform(0.35, 0.6))
    for obj, label in reversed(kept):  # far to near
        _draw_shadow(canvas, label.box if obj.type in _VEHICLES else _mask_box(obj.patch),
                     style.sun, shadow if obj.type in _VEHICLES + ("Misc",) else 0.5 * shadow)
        _composite(canvas, obj.patch)
    image = _finish(rng, canvas, style)
    return image, [label for _, label in kept] + dontcare


def write_synthetic_kitti(root: Path, num_images: int, width: int, height: int, seed: int) -> None:
    """Write ``num_images`` scenes in KITTI's ``training/`` layout under ``root``.

    ``root/image_2/000000.png`` (RGB PNG, width x height) and ``root/label_2/000000.txt``
    (KITTI's 15-field lines). Image ``i`` depends only on ``(seed, i)``, so the output is
    byte-identical for the same arguments and a larger ``num_images`` extends a smaller set.
    Raises ValueError for ``num_images < 1``, an image smaller than 64x64 or a negative seed.
    """
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(f"synthetic scenes: num_images must be an integer >= 1, got {num_images!r}")
    _check_size(width, height)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"synthetic scenes: seed must be a non-negative integer, got {seed!r}")
    root = Path(root)
    image_dir, label_dir = root / "image_2", root / "label_2"
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for index in range(int(num_images)):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), index]))
        image, objects = render_scene(rng, int(width), int(height))
        Image.fromarray(image).save(image_dir / f"{index:06d}.png", format="PNG",
                                                compress_level=2)
        text = "".join(obj.to_kitti_line() + "\n" for obj in objects)
        (label_dir / f"{index:06d}.txt").write_text(text)
