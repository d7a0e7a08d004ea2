"""Synthetic ASL alphabet images: a seeded, parametric 2.5D hand renderer.

No real ASL dataset can be fetched or shipped, so the demo makes its own. A hand is a palm
plane, four three-segment fingers and a three-segment thumb in 3D hand space; every letter is
a pose (per-joint flexion, spread, thumb placement, orientation). Segments are projected
orthographically, sorted by depth and painted as shaded capsules, then the image gets a
forearm, a cluttered background, lighting, blur, sensor noise and JPEG artefacts.

Look-alike letters share poses that differ only in small details, as in real fingerspelling
(A/E/M/N/S/T differ by thumb placement, K/V and U/R by one finger, G/H by one finger).
J and Z are drawn as their starting handshape, like the Kaggle "ASL Alphabet" photos.

Every image is seeded from ``(seed, class index, image index)`` so any single image can be
regenerated alone, byte-identical.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from aslquant.errors import InputError

#: The 29 classes of the Kaggle "ASL Alphabet" layout, in LabelBinarizer (sorted) order.
CLASS_NAMES: tuple[str, ...] = tuple(sorted([chr(c) for c in range(ord("A"), ord("Z") + 1)]))
CLASS_NAMES = CLASS_NAMES + ("del", "nothing", "space")

#: JPEG quality of the files written by generate_dataset (artefacts are added before that).
FILE_JPEG_QUALITY = 90

_FINGERS = ("index", "middle", "ring", "pinky")
# Hand space: palm width ~1, wrist centre at the origin, +y towards the fingers, +x towards the
# pinky, +z towards the camera (palm faces the camera in the rest pose).
_KNUCKLE_X = {"index": -0.33, "middle": -0.11, "ring": 0.11, "pinky": 0.32}
_KNUCKLE_Y = {"index": 0.93, "middle": 0.97, "ring": 0.94, "pinky": 0.86}
_SEG_LEN = {
    "index": (0.44, 0.27, 0.21),
    "middle": (0.49, 0.30, 0.22),
    "ring": (0.46, 0.28, 0.21),
    "pinky": (0.35, 0.21, 0.18),
    "thumb": (0.42, 0.30, 0.25),
}
_RADIUS = {"index": 0.102, "middle": 0.104, "ring": 0.098, "pinky": 0.085, "thumb": 0.118}
_THUMB_ROOT = np.array([-0.36, 0.18, 0.05])
_PALM = np.array(
    [
        (-0.36, 0.0),
        (-0.46, 0.32),
        (-0.46, 0.72),
        (-0.42, 0.95),
        (0.0, 1.0),
        (0.41, 0.90),
        (0.45, 0.60),
        (0.40, 0.25),
        (0.33, 0.0),
    ]
)

# Finger flexion presets (MCP, PIP, DIP) in degrees.
EXT = (0.0, 0.0, 0.0)
CURL = (88.0, 100.0, 55.0)
TIGHT = (95.0, 110.0, 70.0)
HOOK = (15.0, 95.0, 75.0)
E_BEND = (35.0, 110.0, 70.0)
C_CURVE = (30.0, 40.0, 30.0)
O_CURVE = (45.0, 55.0, 45.0)
F_RING = (40.0, 60.0, 45.0)
FLAT_OVER = (75.0, 60.0, 30.0)


@dataclass(frozen=True)
class Thumb:
    """Thumb pose: metacarpal direction (azimuth, elevation) and either a target to reach
    (``"tip:middle"``, ``"pip:index"``, or an explicit hand-space point) or fixed directions
    for the two outer segments. ``z_bias`` moves it in the painter's order only."""

    meta: tuple[float, float] = (30.0, 30.0)
    reach: str | tuple[float, float, float] | None = None
    dirs: tuple[tuple[float, float], tuple[float, float]] = ((10.0, 10.0), (0.0, 0.0))
    z_bias: float = 0.0
    bend: tuple[float, float, float] = (0.0, 0.0, 1.0)
    tip_z: float | None = None  # paint the tip on its own at this depth (peeking out)


@dataclass(frozen=True)
class Pose:
    """One handshape: flexion per finger, spread (deg, + towards the pinky), thumb, view."""

    flex: dict[str, tuple[float, float, float]]
    spread: dict[str, float] = field(default_factory=dict)
    thumb: Thumb = Thumb()
    roll: float = 0.0  # in-plane rotation, degrees, + counter-clockwise
    yaw: float = 0.0  # turn about the hand's long axis, degrees
    pitch: float = 0.0  # tip the fingers towards (+) or away from the camera, degrees
    lift: dict[str, float] = field(default_factory=dict)  # extra depth per finger (crossing)


def _fist(**over: tuple[float, float, float]) -> dict[str, tuple[float, float, float]]:
    flex = {f: CURL for f in _FINGERS}
    flex.update(over)
    return flex


_THUMB_ACROSS = Thumb(meta=(-35.0, 40.0), dirs=((-80.0, 25.0), (-95.0, 10.0)), z_bias=0.1)
_THUMB_FOLD_PALM = Thumb(meta=(-25.0, 25.0), dirs=((-70.0, 15.0), (-90.0, 5.0)), z_bias=-0.05)
_THUMB_SIDE_UP = Thumb(meta=(12.0, 25.0), dirs=((2.0, 15.0), (-4.0, 5.0)), z_bias=0.3)

POSES: dict[str, Pose] = {
    # The closed-fist family: only the thumb tells them apart.
    "A": Pose(_fist(), thumb=_THUMB_SIDE_UP),
    "S": Pose(_fist(), thumb=Thumb(meta=(-10.0, 45.0), reach="pip:ring+", z_bias=0.6)),
    "E": Pose(
        {f: E_BEND for f in _FINGERS},
        thumb=Thumb(meta=(-30.0, 30.0), dirs=((-85.0, 25.0), (-95.0, 10.0)), z_bias=-0.3),
    ),
    "M": Pose(
        _fist(pinky=TIGHT),
        thumb=Thumb(meta=(-20.0, 35.0), reach="pipgap:ring", z_bias=-0.6, tip_z=0.6),
    ),
    "N": Pose(
        _fist(ring=TIGHT, pinky=TIGHT),
        thumb=Thumb(meta=(-15.0, 35.0), reach="pipgap:middle", z_bias=-0.6, tip_z=0.6),
    ),
    "T": Pose(
        _fist(index=(80.0, 95.0, 45.0)),
        thumb=Thumb(meta=(-5.0, 45.0), dirs=((-35.0, 40.0), (-10.0, 10.0)), z_bias=-0.6, tip_z=0.6),
    ),
    # Open hands.
    "B": Pose(
        {f: EXT for f in _FINGERS},
        spread={"index": 2, "ring": -1, "pinky": -3},
        thumb=_THUMB_FOLD_PALM,
    ),
    "C": Pose(
        {f: C_CURVE for f in _FINGERS},
        thumb=Thumb(meta=(40.0, 45.0), dirs=((30.0, 35.0), (10.0, 25.0))),
        yaw=-65.0,
    ),
    "O": Pose(
        {f: O_CURVE for f in _FINGERS},
        thumb=Thumb(meta=(35.0, 55.0), reach="tip:middle"),
        yaw=-60.0,
    ),
    "F": Pose(
        _fist(index=F_RING, middle=EXT, ring=EXT, pinky=EXT),
        spread={"middle": 2, "ring": 9, "pinky": 17},
        thumb=Thumb(meta=(30.0, 40.0), reach="tip:index"),
    ),
    "D": Pose(
        _fist(index=EXT, middle=O_CURVE, ring=(60.0, 70.0, 45.0), pinky=(65.0, 70.0, 45.0)),
        thumb=Thumb(meta=(10.0, 50.0), reach="tip:middle"),
    ),
    "I": Pose(_fist(pinky=EXT), spread={"pinky": 6}, thumb=_THUMB_ACROSS),
    "J": Pose(_fist(pinky=EXT), spread={"pinky": 10}, thumb=_THUMB_ACROSS, yaw=45.0, roll=-25.0),
    "L": Pose(
        _fist(index=EXT),
        spread={"index": -4},
        thumb=Thumb(meta=(70.0, 10.0), dirs=((85.0, 0.0), (88.0, 0.0)), z_bias=0.2),
    ),
    "Y": Pose(
        _fist(pinky=EXT),
        spread={"pinky": 30},
        thumb=Thumb(meta=(65.0, 10.0), dirs=((80.0, 0.0), (85.0, 0.0)), z_bias=0.2),
    ),
    "U": Pose(_fist(index=EXT, middle=EXT), spread={"index": 1, "middle": -1}, thumb=_THUMB_ACROSS),
    "R": Pose(
        _fist(index=EXT, middle=EXT),
        spread={"index": 7, "middle": -7},
        lift={"index": 0.15},
        thumb=_THUMB_ACROSS,
    ),
    "V": Pose(
        _fist(index=EXT, middle=EXT), spread={"index": -11, "middle": 11}, thumb=_THUMB_ACROSS
    ),
    "K": Pose(
        _fist(index=EXT, middle=(35.0, 5.0, 0.0)),
        spread={"index": -10, "middle": 8},
        thumb=Thumb(meta=(5.0, 45.0), reach="pip:middle", z_bias=0.2),
    ),
    "W": Pose(
        _fist(index=EXT, middle=EXT, ring=EXT),
        spread={"index": -11, "middle": 0, "ring": 11},
        thumb=Thumb(meta=(-20.0, 40.0), reach="pip:pinky", z_bias=0.3),
    ),
    "X": Pose(_fist(index=HOOK), thumb=_THUMB_ACROSS),
    "Z": Pose(_fist(index=EXT), spread={"index": -6}, thumb=_THUMB_ACROSS, pitch=35.0, roll=20.0),
    # Sideways and downward shapes.
    "G": Pose(
        _fist(index=EXT),
        thumb=Thumb(meta=(25.0, 35.0), dirs=((5.0, 35.0), (0.0, 30.0)), z_bias=0.3),
        roll=95.0,
        yaw=-70.0,
    ),
    "H": Pose(_fist(index=EXT, middle=EXT), thumb=_THUMB_ACROSS, roll=95.0, yaw=-70.0),
    "P": Pose(
        _fist(index=EXT, middle=(35.0, 5.0, 0.0)),
        spread={"index": -10, "middle": 8},
        thumb=Thumb(meta=(5.0, 45.0), reach="pip:middle", z_bias=0.2),
        roll=150.0,
        pitch=-30.0,
    ),
    "Q": Pose(
        _fist(index=EXT),
        thumb=Thumb(meta=(25.0, 35.0), dirs=((5.0, 35.0), (0.0, 30.0)), z_bias=0.3),
        roll=170.0,
        yaw=-40.0,
        pitch=-30.0,
    ),
    # Kaggle's extra classes.
    "del": Pose(
        {f: (10.0, 10.0, 5.0) for f in _FINGERS},
        spread={"index": -14, "middle": -4, "ring": 6, "pinky": 18},
        thumb=Thumb(meta=(55.0, 20.0), dirs=((60.0, 15.0), (62.0, 10.0))),
        roll=-80.0,
        yaw=50.0,
    ),
    "space": Pose(
        {f: (5.0, 5.0, 0.0) for f in _FINGERS},
        spread={"index": -2, "pinky": 3},
        thumb=Thumb(meta=(40.0, 15.0), dirs=((35.0, 10.0), (30.0, 5.0))),
        roll=75.0,
        pitch=60.0,
    ),
}

_SKIN = np.array(
    [
        (241, 206, 180),
        (232, 190, 160),
        (224, 172, 135),
        (198, 145, 108),
        (170, 120, 85),
        (141, 94, 62),
        (110, 72, 48),
        (86, 56, 38),
    ],
    dtype=np.float64,
)


def _rot(roll: float, yaw: float, pitch: float) -> np.ndarray:
    r, y, p = (math.radians(v) for v in (roll, yaw, pitch))
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return rz @ ry @ rx


def _azel(az: float, el: float) -> np.ndarray:
    """Unit vector: azimuth from +y towards -x (thumb side), elevation towards the camera."""
    a, e = math.radians(az), math.radians(el)
    return np.array([-math.sin(a) * math.cos(e), math.cos(a) * math.cos(e), math.sin(e)])


def _two_link(
    start: np.ndarray, target: np.ndarray, l1: float, l2: float, hint: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Place a two-segment chain from start towards target, bending towards ``hint``."""
    d = target - start
    dist = float(np.linalg.norm(d))
    u = d / max(dist, 1e-6)
    dist = min(dist, (l1 + l2) * 0.999)
    end = start + u * dist
    # Law of cosines for the distance along u to the middle joint, then offset sideways.
    a = (l1 * l1 - l2 * l2 + dist * dist) / (2 * dist)
    h = math.sqrt(max(l1 * l1 - a * a, 0.0))
    side = hint - np.dot(hint, u) * u
    n = float(np.linalg.norm(side))
    side = side / n if n > 1e-6 else np.array([0.0, 0.0, 1.0])
    return start + u * a + side * h, end


@dataclass
class _Seg:
    a: np.ndarray
    b: np.ndarray
    r0: float
    r1: float
    zkey: float
    part: str


def _finger_chain(
    name: str, flex: tuple[float, float, float], spread: float, lengths: tuple[float, ...]
) -> list[np.ndarray]:
    base = np.array([_KNUCKLE_X[name], _KNUCKLE_Y[name], 0.0])
    s = math.radians(spread)
    d0 = np.array([math.sin(s), math.cos(s), 0.0])
    z = np.array([0.0, 0.0, 1.0])
    pts = [base]
    theta = 0.0
    for f, length in zip(flex, lengths, strict=True):
        theta += math.radians(f)
        d = math.cos(theta) * d0 + math.sin(theta) * z
        pts.append(pts[-1] + d * length)
    return pts


def _hand_segments(pose: Pose, rng: np.random.Generator) -> tuple[list[_Seg], np.ndarray]:
    """3D capsules (hand space, before the view rotation) with per-image joint jitter."""
    segs: list[_Seg] = []
    scale_len = rng.uniform(0.93, 1.07)
    chains: dict[str, list[np.ndarray]] = {}
    for name in _FINGERS:
        flex = tuple(max(0.0, f + rng.normal(0, 4.0)) for f in pose.flex[name])
        spread = pose.spread.get(name, 0.0) + rng.normal(0, 1.5)
        lengths = tuple(v * scale_len * rng.uniform(0.96, 1.04) for v in _SEG_LEN[name])
        pts = _finger_chain(name, flex, spread, lengths)  # type: ignore[arg-type]
        lift = pose.lift.get(name, 0.0)
        if lift:
            pts = [p + np.array([0, 0, lift * min(i, 1)]) for i, p in enumerate(pts)]
        chains[name] = pts
        r = _RADIUS[name]
        for i in range(3):
            a, b = pts[i], pts[i + 1]
            zkey = (a[2] + b[2]) / 2 + lift + 0.02 * i
            segs.append(_Seg(a, b, r * (1 - 0.06 * i), r * (1 - 0.06 * (i + 1)), zkey, name))
    # Thumb.
    t = pose.thumb
    lens = tuple(v * scale_len for v in _SEG_LEN["thumb"])
    root = _THUMB_ROOT.copy()
    jit = rng.normal(0, 4.0, size=2)
    p1 = root + _azel(t.meta[0] + jit[0], t.meta[1] + jit[1]) * lens[0]
    if t.reach is None:
        p2 = p1 + _azel(t.dirs[0][0] + jit[0], t.dirs[0][1]) * lens[1]
        p3 = p2 + _azel(t.dirs[1][0] + jit[0], t.dirs[1][1]) * lens[2]
    else:
        target = _thumb_target(t.reach, chains)
        p2, p3 = _two_link(p1, target, lens[1], lens[2], np.array(t.bend))
    tpts = [root, p1, p2, p3]
    for i in range(3):
        a, b = tpts[i], tpts[i + 1]
        r = _RADIUS["thumb"] * (1 - 0.08 * i)
        part, zkey = "thumb", (a[2] + b[2]) / 2 + t.z_bias
        if i == 2 and t.tip_z is not None:
            part, zkey = "thumbtip", (a[2] + b[2]) / 2 + t.tip_z
        segs.append(_Seg(a, b, r, r * 0.93, zkey, part))
    return segs, np.array(tpts)


def _thumb_target(spec: str | tuple[float, float, float], chains: dict) -> np.ndarray:
    if not isinstance(spec, str):
        return np.array(spec, dtype=float)
    kind, _, finger = spec.partition(":")
    shift = 0.0
    if finger.endswith("+"):
        finger, shift = finger[:-1], 0.12
    elif finger.endswith("-"):
        finger, shift = finger[:-1], -0.12
    pts = chains[finger]
    if kind == "tip":
        return pts[3] + np.array([0.0, -0.03, 0.0])
    if kind == "pipgap":
        # Low between this finger's bent middle joint and the next one's (M and N).
        nxt = chains[_FINGERS[_FINGERS.index(finger) + 1]]
        return (pts[2] + nxt[2]) / 2 + np.array([0.0, -0.05, 0.05])
    if kind == "gap":
        # Between this finger and the next one, poking out over the knuckles.
        nxt = chains[_FINGERS[_FINGERS.index(finger) + 1]]
        mid = (pts[1] + nxt[1]) / 2
        return mid + np.array([0.0, 0.08, 0.02])
    # "pip": in front of the finger's middle joint (the bent knuckle of a fist).
    return pts[2] + np.array([0.0, shift, 0.12 if shift >= 0 else -0.05])


def _lerp(c0: np.ndarray, c1: np.ndarray, t: float) -> tuple[int, int, int]:
    c = np.asarray(c0, dtype=np.float64) * (1 - t) + np.asarray(c1, dtype=np.float64) * t
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _capsule(draw: ImageDraw.ImageDraw, a, b, ra: float, rb: float, fill) -> None:
    """A tapered capsule: two discs joined by their common tangent quad."""
    ax, ay = a
    bx, by = b
    draw.ellipse((ax - ra, ay - ra, ax + ra, ay + ra), fill=fill)
    draw.ellipse((bx - rb, by - rb, bx + rb, by + rb), fill=fill)
    dx, dy = bx - ax, by - ay
    n = math.hypot(dx, dy)
    if n < 1e-3:
        return
    nx, ny = -dy / n, dx / n
    draw.polygon(
        [
            (ax + nx * ra, ay + ny * ra),
            (bx + nx * rb, by + ny * rb),
            (bx - nx * rb, by - ny * rb),
            (ax - nx * ra, ay - ny * ra),
        ],
        fill=fill,
    )


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Room-like clutter: a gradient wall, blocks and shapes, some texture."""
    base = rng.uniform(40, 230, size=3)
    other = np.clip(base + rng.normal(0, 45, size=3), 0, 255)
    yy = np.linspace(0, 1, size)[:, None, None]
    xx = np.linspace(0, 1, size)[None, :, None]
    ang = rng.uniform(0, 2 * math.pi)
    g = (math.cos(ang) * xx + math.sin(ang) * yy + 1.5) / 3.0
    arr = base * (1 - g) + other * g
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 7))):
        # Muted clutter: colours pulled half-way towards the wall's.
        col = tuple(int(v) for v in (rng.uniform(20, 240, size=3) + base) / 2)
        x0, y0 = rng.uniform(-0.2, 1.0, size=2) * size
        w, h = rng.uniform(0.05, 0.6, size=2) * size
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=col)
        elif kind == 1:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=col)
        elif kind == 2:
            draw.line((x0, y0, x0 + w, y0 + h), fill=col, width=int(rng.integers(2, 12)))
        else:
            step = int(rng.integers(6, 20))
            for k in range(0, int(w), step):
                draw.line((x0 + k, y0, x0 + k, y0 + h), fill=col, width=max(1, step // 3))
    arr = np.asarray(img, dtype=np.float64)
    # Low-frequency texture (plaster, fabric, wood) from upsampled noise.
    cells = int(rng.integers(4, 32))
    tex = rng.normal(0, 1, size=(cells, cells)).astype(np.float32)
    tex_img = Image.fromarray(((tex - tex.min()) / (np.ptp(tex) + 1e-6) * 255).astype(np.uint8))
    tex = np.asarray(tex_img.resize((size, size), Image.BICUBIC), dtype=np.float64) / 255 - 0.5
    arr = arr * (1 + rng.uniform(0.05, 0.35) * tex[:, :, None])
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3.0)))


def _hand_layer(
    letter: str, rng: np.random.Generator, size: int
) -> tuple[Image.Image, Image.Image]:
    """The hand (with forearm) as an RGB image and its alpha mask, at ``size``."""
    pose = POSES[letter]
    ss = 2  # supersampling for smooth edges
    big = size * ss
    segs, _ = _hand_segments(pose, rng)
    rot = _rot(
        pose.roll + rng.normal(0, 9.0),
        pose.yaw + rng.normal(0, 10.0),
        pose.pitch + rng.normal(0, 8.0),
    )
    scale = big * rng.uniform(0.30, 0.40)  # pixels per hand unit (palm width)
    # Centre the hand's middle (palm centre) around the image centre, with jitter.
    centre = np.array([big / 2, big / 2]) + rng.uniform(-0.08, 0.08, size=2) * big
    palm_mid = rot @ np.array([0.0, 0.7, 0.0])

    def proj(p: np.ndarray) -> tuple[float, float]:
        q = rot @ p - palm_mid
        return (centre[0] + q[0] * scale, centre[1] - q[1] * scale)

    skin = _SKIN[int(rng.integers(0, len(_SKIN)))] * rng.uniform(0.92, 1.08)
    skin = skin + rng.normal(0, 6, size=3)
    light = _azel(rng.uniform(-60, 60), rng.uniform(20, 70))
    dark = skin * 0.55
    hi = np.clip(skin * 1.12 + 12, 0, 255)
    crease = skin * 0.62

    img = Image.new("RGB", (big, big), (0, 0, 0))
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    mdraw = ImageDraw.Draw(mask)

    # Forearm first: from the wrist towards the bottom edge, sometimes in a sleeve.
    wrist = np.array(proj(np.array([0.0, 0.3, 0.0])))
    fa_ang = math.radians(rng.normal(0, 12))
    far = wrist + np.array([math.sin(fa_ang), math.cos(fa_ang)]) * big * 1.2
    # The arm is as wide as the wrist looks: narrower when the palm is seen edge-on.
    across = rot @ np.array([1.0, 0.0, 0.0])
    fr = 0.31 * scale * max(0.6, math.hypot(across[0], across[1]))
    sleeve = rng.random() < 0.5
    arm_col = rng.uniform(20, 230, size=3) if sleeve else skin
    for k, (rr, t) in enumerate(((1.0, 0.0), (0.75, 0.35), (0.4, 0.55))):
        col = _lerp(arm_col * 0.6, arm_col * 1.05, t)
        off = np.array([fr * 0.15 * k * light[0], 0.0])
        _capsule(draw, tuple(wrist + off), tuple(far + off), fr * rr, fr * rr * 1.2, col)
    _capsule(mdraw, tuple(wrist), tuple(far), fr, fr * 1.2, 255)
    if sleeve:
        # Skin of the wrist between the sleeve cuff and the palm.
        cuff = wrist + (far - wrist) / np.linalg.norm(far - wrist) * fr * 1.2
        _capsule(draw, tuple(wrist), tuple(cuff), fr * 0.9, fr * 0.9, _lerp(dark, skin, 0.7))

    # Palm: a polygon in hand space, shaded by how much it faces the light.
    palm3 = [np.array([x, y, 0.0]) for x, y in _PALM]
    normal = rot @ np.array([0.0, 0.0, 1.0])
    facing = max(0.0, float(np.dot(normal, light)))
    palm_col = _lerp(dark, skin, 0.55 + 0.45 * facing)
    poly = [proj(p) for p in palm3]
    draw.polygon(poly, fill=_lerp(dark, skin, 0.35))
    mdraw.polygon(poly, fill=255)
    inner = [
        proj(np.array([0.0, 0.5, 0.0]) + (p - np.array([0.0, 0.5, 0.0])) * 0.86) for p in palm3
    ]
    draw.polygon(inner, fill=palm_col)
    hl = [proj(np.array([0.05, 0.55, 0.0]) + (p - np.array([0.0, 0.5, 0.0])) * 0.5) for p in palm3]
    draw.polygon(hl, fill=_lerp(palm_col, hi, 0.25 * facing))
    # Palm creases (heart and life lines) when the palm faces the camera.
    if normal[2] > 0.3:
        for line in (
            [(-0.42, 0.62), (-0.1, 0.66), (0.2, 0.74), (0.42, 0.72)],
            [(-0.4, 0.45), (-0.2, 0.35), (-0.12, 0.15), (-0.1, 0.02)],
        ):
            pts = [proj(np.array([x, y, 0.0])) for x, y in line]
            draw.line(pts, fill=_lerp(crease, palm_col, 0.45), width=max(1, int(scale * 0.02)))

    # Fingers and thumb in depth order (far first). Each digit is painted as one piece (all
    # its outlines, then all its fills) so its segments join smoothly at the knuckles.
    parts: dict[str, list[tuple[float, _Seg, np.ndarray, np.ndarray]]] = {}
    for s in segs:
        a3, b3 = rot @ s.a, rot @ s.b
        # Depth after the view rotation, plus the pose's painter bias.
        zkey = (a3[2] + b3[2]) / 2 + (s.zkey - (s.a[2] + s.b[2]) / 2)
        parts.setdefault(s.part, []).append((zkey, s, a3, b3))
    order = sorted(parts, key=lambda p: float(np.mean([item[0] for item in parts[p]])))
    width = max(1, int(scale * 0.012))
    for part in order:
        items = sorted(parts[part], key=lambda item: item[0])
        shaded = []
        for _, s, a3, b3 in items:
            a, b = proj(s.a), proj(s.b)
            d = b3 - a3
            dn = d / (np.linalg.norm(d) + 1e-9)
            # Segments pointing at the camera show their end: a bit brighter, foreshortened.
            lit = 0.55 + 0.45 * max(0.0, float(np.dot(light, dn)) * 0.5 + abs(dn[2]) * 0.3 + 0.35)
            base_col = _lerp(dark, skin, min(lit, 1.0))
            shaded.append((s, a, b, base_col, s.r0 * scale, s.r1 * scale))
        for _s, a, b, base_col, ra, rb in shaded:
            _capsule(draw, a, b, ra, rb, _lerp(dark, base_col, 0.25))
            _capsule(mdraw, a, b, ra, rb, 255)
        for _s, a, b, base_col, ra, rb in shaded:
            off = (light[0] * 0.18 * ra, -light[1] * 0.18 * ra)
            a2 = (a[0] + off[0], a[1] + off[1])
            b2 = (b[0] + off[0], b[1] + off[1])
            _capsule(draw, a2, b2, ra * 0.78, rb * 0.78, base_col)
        for _s, a, b, base_col, ra, rb in shaded:
            off = (light[0] * 0.36 * ra, -light[1] * 0.36 * ra)
            a4 = (a[0] + off[0], a[1] + off[1])
            b4 = (b[0] + off[0], b[1] + off[1])
            _capsule(draw, a4, b4, ra * 0.3, rb * 0.3, _lerp(base_col, hi, 0.45))
            # A faint knuckle crease across the joint at the segment's start.
            seg_len = math.hypot(b[0] - a[0], b[1] - a[1])
            if seg_len > ra * 1.2:
                ux, uy = (b[0] - a[0]) / seg_len, (b[1] - a[1]) / seg_len
                cx, cy = a[0] + ux * ra * 0.3, a[1] + uy * ra * 0.3
                w = ra * 0.55
                draw.line(
                    (cx - uy * w, cy + ux * w, cx + uy * w, cy - ux * w),
                    fill=_lerp(crease, base_col, 0.5),
                    width=width,
                )
    img = img.resize((size, size), Image.LANCZOS)
    mask = mask.resize((size, size), Image.LANCZOS)
    return img, mask


def silhouette(letter: str, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """The hand's coverage mask (float 0..1, size x size) as ``render`` would draw it.

    Two letters rendered from generators in the same state get the same view, scale and
    joint jitter, so their masks differ only by handshape. ``nothing`` has no hand."""
    if letter not in CLASS_NAMES:
        raise InputError(f"letter {letter!r}: not one of the 29 classes {', '.join(CLASS_NAMES)}")
    if letter == "nothing":
        return np.zeros((size, size), dtype=np.float32)
    _, mask = _hand_layer(letter, rng, size)
    return np.asarray(mask, dtype=np.float32) / 255


def render(letter: str, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """Render one synthetic image of ``letter`` (a name in CLASS_NAMES) as a size x size RGB."""
    if letter not in CLASS_NAMES:
        raise InputError(f"letter {letter!r}: not one of the 29 classes {', '.join(CLASS_NAMES)}")
    bg = _background(rng, size)
    if letter == "nothing":
        img = bg
        mask = None
    else:
        hand, mask = _hand_layer(letter, rng, size)
        # Soft cast shadow of the hand on the wall behind it.
        off = rng.uniform(-0.06, 0.06, size=2) * size
        shadow = mask.transform(mask.size, Image.AFFINE, (1, 0, -off[0], 0, 1, -off[1]))
        shadow = shadow.filter(ImageFilter.GaussianBlur(size * 0.02))
        sh = np.asarray(shadow, dtype=np.float64)[:, :, None] / 255 * rng.uniform(0.15, 0.45)
        bga = np.asarray(bg, dtype=np.float64) * (1 - sh)
        m = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float64)[:, :, None]
        arr = bga * (1 - m / 255) + np.asarray(hand, dtype=np.float64) * (m / 255)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    arr = np.asarray(img, dtype=np.float64)
    # Scene lighting: a directional gradient, an overall exposure and a colour cast.
    yy = np.linspace(-1, 1, size)[:, None, None]
    xx = np.linspace(-1, 1, size)[None, :, None]
    ang = rng.uniform(0, 2 * math.pi)
    grad = 1 + rng.uniform(0.0, 0.35) * (math.cos(ang) * xx + math.sin(ang) * yy)
    cast = rng.uniform(0.85, 1.15, size=3)
    arr = arr * grad * cast * rng.uniform(0.65, 1.25)
    # Sensor noise, then optics blur and a JPEG round trip at a random quality.
    arr = arr + rng.normal(0, rng.uniform(1.0, 6.0), size=arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(50, 93)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def image_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    """The generator for one image, so any image can be regenerated on its own."""
    return np.random.default_rng([int(seed), int(class_index), int(index)])


def render_bytes(letter: str, seed: int, index: int, size: int = 224) -> bytes:
    """The exact JPEG bytes generate_dataset writes for image ``index`` of ``letter``."""
    rng = image_rng(seed, CLASS_NAMES.index(letter), index)
    buf = io.BytesIO()
    render(letter, rng, size).save(buf, format="JPEG", quality=FILE_JPEG_QUALITY)
    return buf.getvalue()


def generate_dataset(
    out_dir: str | Path,
    per_class: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write ``out_dir/<class>/<class><i>.jpg`` (i from 1, Kaggle names) for all 29 classes."""
    if per_class < 1:
        raise InputError(f"--per-class {per_class}: must be at least 1")
    out = Path(out_dir)
    total = per_class * len(CLASS_NAMES)
    written: list[Path] = []
    for name in CLASS_NAMES:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, per_class + 1):
            path = folder / f"{name}{i}.jpg"
            path.write_bytes(render_bytes(name, seed, i))
            written.append(path)
            if progress is not None:
                progress(len(written), total)
    return written


def contact_sheet(path: str | Path, seed: int, cols: int = 6, cell: int = 160) -> Path:
    """One labelled image per class in a grid, saved as PNG at ``path``."""
    rows = math.ceil(len(CLASS_NAMES) / cols)
    label_h = 22
    sheet = Image.new("RGB", (cols * cell, rows * (cell + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=16)
    except TypeError:  # very old Pillow without scalable default font
        font = ImageFont.load_default()
    for k, name in enumerate(CLASS_NAMES):
        img = Image.open(io.BytesIO(render_bytes(name, seed, 1))).convert("RGB")
        x, y = (k % cols) * cell, (k // cols) * (cell + label_h)
        sheet.paste(img.resize((cell - 4, cell - 4), Image.LANCZOS), (x + 2, y + label_h))
        draw.text((x + 6, y + 2), name, fill=(0, 0, 0), font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def write_labels(folder: str | Path) -> list[Path]:
    """Write ``labels.txt`` (one class per line) and ``lb.pkl`` the way the original ASL
    project does (``joblib.dump`` of a fitted scikit-learn LabelBinarizer). Build time only:
    scikit-learn is imported here and nowhere in the engine."""
    import joblib
    from sklearn.preprocessing import LabelBinarizer

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    txt = out / "labels.txt"
    txt.write_text("".join(f"{name}\n" for name in CLASS_NAMES), encoding="utf-8")
    pkl = out / "lb.pkl"
    joblib.dump(LabelBinarizer().fit(list(CLASS_NAMES)), pkl)
    return [txt, pkl]


def synth_main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m aslquant synth --out DIR --per-class N --seed S``."""
    parser = argparse.ArgumentParser(
        prog="aslquant synth", description="Write a synthetic ASL alphabet set (Kaggle layout)."
    )
    parser.add_argument("--out", required=True, help="output folder (class folders go inside)")
    parser.add_argument("--per-class", type=int, default=40, help="images per class (default 40)")
    parser.add_argument("--seed", type=int, default=2026, help="seed (default 2026)")
    parser.add_argument("--contact-sheet", default=None, help="also write a PNG contact sheet")
    parser.add_argument(
        "--labels", default=None, help="also write labels.txt and lb.pkl into this folder"
    )
    args = parser.parse_args(argv)
    try:
        if args.seed < 0:
            raise InputError(f"--seed {args.seed}: must be a non-negative integer")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out}: exists and is not a folder")

        def bar(done: int, total: int) -> None:
            if done % 50 == 0 or done == total:
                print(f"\r{done}/{total} images", end="", file=sys.stderr, flush=True)

        paths = generate_dataset(out, args.per_class, args.seed, progress=bar)
        print(file=sys.stderr)
        if args.contact_sheet:
            contact_sheet(args.contact_sheet, args.seed)
        if args.labels:
            write_labels(args.labels)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} images in {len(CLASS_NAMES)} class folders under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(synth_main(sys.argv[1:]))
