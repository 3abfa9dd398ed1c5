"""Image families on the square ``[-1, 1]^2`` (the tank is the unit disk), values in ``[0, 1]``
(``ktc``: in ``[-1, 1]``).

``bars`` (d = 1)
    The paper's bars: a rectangle centred in the image, 50 x 10 px at 128 x 128 (25 x 5 px at
    64 x 64: every length scales with the image, so :data:`BAR_LENGTH` and :data:`BAR_WIDTH` are
    fractions of the side ``2``), rotated by an angle ``theta`` uniform in ``[0, pi)``, value
    ``BAR_BACKGROUND + BAR_CONTRAST = 0.75`` on the background ``BAR_BACKGROUND = 0.5``. The image
    only depends on ``theta`` modulo ``pi``; compare
    angles with :func:`eit_manifold.metrics.angle_error` (re-exported here). Parameters: ``{"angle": theta}``.
``balls`` (d = 6), the paper's family (Alberti et al. 2024, section 6)
    Two disjoint *conductive* disks on the background ``BALL_BACKGROUND = 127/255``, both of value
    ``BALL_VALUE = 207/255`` (with the EIT map ``sigma = 0.2 + 1.6 x``: background 0.997, disks
    1.499). The paper's lengths are pixels of a 128x128 image centred at (64, 64); here they are in
    units of the half-width (64 px = 1), so every size draws the same family (at 64x64 every length
    in pixels is halved). Radii uniform in ``BALL_RADII = [12, 25] px``, centres at a polar offset of
    radius uniform in ``[0, BALL_OFFSET = 45 px]`` and uniform angle from the image centre; a disk is
    redrawn while offset + radius >= ``BALL_EXTENT = 62 px`` or while it comes within
    ``BALL_GAP = 6 px`` of the disk drawn before it. Parameters:
    ``{"centres": (2, 2), "radii": (2,), "values": (2,)}``.
``balls-signed`` (d = 6), the package's first family
    Two disjoint disks on the background ``0.5``: a conductive one of value ``0.9`` and a resistive
    one of value ``0.1`` (sigma 1.64 and 0.36). Radii uniform in ``[0.15, 0.35]``, centres uniform in
    the disk of radius ``0.9 - r``, disks at least 0.05 apart (rejection). Same parameters.
``balls-mixed`` (d = 8), for phantoms that are not the paper's
    The paper's geometry; each disk conductive or resistive with probability 1/2, contrast
    ``|value - BALL_BACKGROUND|`` uniform in ``MIXED_CONTRAST = [0.15, 0.45]`` (sigma from about 0.28
    to 1.72). Same parameters.
``ktc`` (d = :data:`KTC_LATENT_DIM`, chosen from held-out projection errors; the family itself has
    no fixed dimension)
    KTC2023-like targets on the background ``0``: 1 to 3 disjoint targets, each a disk or a convex
    polygon (3 to 7 vertices on a rotated ellipse of axis ratio in ``[0.7, 1]``), each resistive
    (value ``-1``) or conductive (``+1``) with probability 1/2. Sizes (radius of the enclosing
    circle) uniform in :data:`KTC_RADII`, every target inside the disk of radius
    ``1 - KTC_MARGIN``, targets at least :data:`KTC_GAP` apart (rejection on enclosing circles).
    Ranges were set once from ``true1..4.mat`` (equivalent radii 0.19-0.30 R, outermost target
    pixel at 0.59-0.73 R), with room on both sides. Parameters:
    ``{"centres": (n, 2), "radii": (n,), "values": (n,), "vertices": list of (m, 2) or None}``.

Edges are anti-aliased (linear ramp one pixel wide), so each family is a continuous manifold.
Image ``i`` of a split is drawn from its own item seed: the train split uses item seeds
``seed * 10**6 + i`` and the test split ``TEST_OFFSET + seed * 10**6 + i``, so train and test never
overlap (for ``i < 10**6``, ``seed < 1000``). :func:`heldout_image` returns test images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eit_manifold.metrics import angle_error as angle_error  # re-export (modulo pi)

BAR_BACKGROUND = 0.5
BAR_CONTRAST = 0.25
BAR_PAPER_SIZE = 128  # the paper's image side, in pixels
BAR_LENGTH = 2 * 50 / BAR_PAPER_SIZE  # 50 px of 128, in units of the square [-1, 1]^2
BAR_WIDTH = 2 * 10 / BAR_PAPER_SIZE  # 10 px of 128
BALL_BACKGROUND = 127 / 255  # the paper's grey levels (8-bit images)
BALL_VALUE = 207 / 255
_PAPER_PX = 64.0  # the paper's 128x128 images: 64 px = half-width = 1
BALL_RADII = (12 / _PAPER_PX, 25 / _PAPER_PX)
BALL_OFFSET = 45 / _PAPER_PX
BALL_EXTENT = 62 / _PAPER_PX
BALL_GAP = 6 / _PAPER_PX
SIGNED_BACKGROUND = 0.5
SIGNED_VALUES = (0.9, 0.1)
SIGNED_RADII = (0.15, 0.35)
SIGNED_MARGIN = 0.1
SIGNED_GAP = 0.05
MIXED_CONTRAST = (0.15, 0.45)
BALL_FAMILIES = ("balls", "balls-signed", "balls-mixed")
KTC_RADII = (0.15, 0.38)  # enclosing-circle radius, in units of the tank radius
KTC_MARGIN = 0.08  # targets stay inside the disk of radius 1 - KTC_MARGIN
KTC_GAP = 0.06
KTC_MAX_TARGETS = 3
KTC_LATENT_DIM = 32
TEST_OFFSET = 2**40
PER_SEED = 10**6
IMAGE_DATASETS = ("bars", *BALL_FAMILIES, "ktc")
IMAGE_LATENT_DIMS = {"bars": 1, "balls": 6, "balls-signed": 6, "balls-mixed": 8, "ktc": KTC_LATENT_DIM}


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(X, Y)`` of a ``size x size`` grid on ``[-1, 1]^2``.

    Row 0 is ``y = +1`` (top), column 0 is ``x = -1``, so ``image[i, j]`` sits at
    ``(X[i, j], Y[i, j])``.
    """
    c = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(c, -c, indexing="xy")


def _ramp(signed_distance: np.ndarray, size: int) -> np.ndarray:
    """Coverage in ``[0, 1]`` from a signed distance (positive inside), one pixel wide ramp."""
    h = 2.0 / size
    return np.clip(0.5 + signed_distance / h, 0.0, 1.0)


def rectangle_coverage(
    angle: float, length: float, width: float, size: int, centre: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Coverage in ``[0, 1]`` of a rotated rectangle (lengths and centre in units of ``[-1, 1]^2``).

    The long side (``length``) points along ``(cos angle, sin angle)``; edges are anti-aliased.
    """
    x, y = pixel_grid(size)
    x, y = x - centre[0], y - centre[1]
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    return _ramp(length / 2 - np.abs(u), size) * _ramp(width / 2 - np.abs(v), size)


def render_bar(angle: float, size: int = 64) -> np.ndarray:
    """The paper's bar image for ``angle`` (radians), float32 ``(size, size)``."""
    inside = rectangle_coverage(angle, BAR_LENGTH, BAR_WIDTH, size)
    return (BAR_BACKGROUND + BAR_CONTRAST * inside).astype(np.float32)


def render_balls(centres: np.ndarray, radii: np.ndarray, values: np.ndarray, background: float,
                 size: int = 64) -> np.ndarray:
    """Disjoint disks on a constant background, float32 ``(size, size)``; disk ``j`` has ``values[j]``."""
    x, y = pixel_grid(size)
    img = np.full((size, size), float(background))
    for (cx, cy), r, value in zip(centres, radii, values, strict=True):
        cover = _ramp(r - np.hypot(x - cx, y - cy), size)
        img = img + (value - background) * cover
    return img.astype(np.float32)


def ball_background(name: str) -> float:
    """Background value of the ball family ``name``."""
    return SIGNED_BACKGROUND if name == "balls-signed" else BALL_BACKGROUND


def _polygon_distance(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance to the boundary of a convex polygon (counter-clockwise vertices), positive inside.

    Exact inside; outside it is the largest edge-line distance, which is exact within a pixel of
    the edges and only matters there (the ramp is one pixel wide).
    """
    d = np.full(x.shape, np.inf)
    for a, b in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        edge = b - a
        normal = np.array([-edge[1], edge[0]]) / np.linalg.norm(edge)  # inward for CCW order
        d = np.minimum(d, (x - a[0]) * normal[0] + (y - a[1]) * normal[1])
    return d


def render_ktc(params: dict, size: int = 64) -> np.ndarray:
    """KTC-like image (background 0, targets -1 or +1), float32 ``(size, size)``."""
    x, y = pixel_grid(size)
    img = np.zeros((size, size))
    for (cx, cy), r, value, vertices in zip(params["centres"], params["radii"], params["values"],
                                            params["vertices"], strict=True):
        if vertices is None:
            distance = r - np.hypot(x - cx, y - cy)
        else:
            distance = _polygon_distance(x, y, np.asarray(vertices))
        img = img + value * _ramp(distance, size)  # targets are disjoint: no overlap to resolve
    return img.astype(np.float32)


def _ktc_params(rng: np.random.Generator) -> dict:
    n = int(rng.integers(1, KTC_MAX_TARGETS + 1))
    centres, radii = disjoint_disks(rng, n, KTC_RADII, KTC_MARGIN, KTC_GAP)
    values = rng.choice([-1.0, 1.0], n)
    vertices: list[np.ndarray | None] = []
    for c, r in zip(centres, radii, strict=True):
        if rng.uniform() < 0.5:
            vertices.append(None)
            continue
        vertices.append(c + ellipse_polygon(rng, r, 0.7))
    return {"centres": centres, "radii": radii, "values": values, "vertices": vertices}


def ellipse_polygon(rng: np.random.Generator, radius: float, min_ratio: float) -> np.ndarray:
    """A random convex polygon around the origin, vertices ``(m, 2)`` counter-clockwise.

    3-7 vertices at random angles (no gap wider than 0.9 pi, which would make a sliver) on an
    ellipse inscribed in the circle of ``radius``: axis ratio uniform in ``[min_ratio, 1]``, random
    rotation.
    """
    m = int(rng.integers(3, 8))
    t = np.sort(rng.uniform(0, 2 * np.pi, m))
    while np.max(np.diff(np.append(t, t[0] + 2 * np.pi))) > 0.9 * np.pi:
        t = np.sort(rng.uniform(0, 2 * np.pi, m))
    ratio, rot = rng.uniform(min_ratio, 1.0), rng.uniform(0, np.pi)
    px, py = radius * np.cos(t), radius * ratio * np.sin(t)
    return np.column_stack([px * np.cos(rot) - py * np.sin(rot), px * np.sin(rot) + py * np.cos(rot)])


def _bar_params(rng: np.random.Generator) -> dict:
    return {"angle": float(rng.uniform(0.0, np.pi))}


def disjoint_disks(rng: np.random.Generator, n: int, radii_range: tuple[float, float], margin: float,
                    gap: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` disks (centres ``(n, 2)``, radii ``(n,)``) inside the disk of radius ``1 - margin``, pairwise
    at least ``gap`` apart: radii uniform in ``radii_range``, centres uniform in the allowed disk (rejection)."""
    while True:
        radii = rng.uniform(*radii_range, n)
        rho = (1.0 - margin - radii) * np.sqrt(rng.uniform(0, 1, n))
        phi = rng.uniform(0, 2 * np.pi, n)
        centres = np.stack([rho * np.cos(phi), rho * np.sin(phi)], axis=1)
        if all(np.linalg.norm(centres[i] - centres[j]) >= radii[i] + radii[j] + gap
               for i in range(n) for j in range(i + 1, n)):
            return centres, radii


def paper_disks(rng: np.random.Generator, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``n`` disks drawn as in the paper: centres ``(n, 2)``, radii ``(n,)`` in half-width units.

    Disk ``j`` is drawn (radius uniform in :data:`BALL_RADII`, centre at an offset uniform in
    ``[0, BALL_OFFSET]`` from the image centre, uniform angle) and redrawn until it lies inside the
    circle of radius :data:`BALL_EXTENT` and at least :data:`BALL_GAP` from every disk before it.
    """
    centres: list[np.ndarray] = []
    radii: list[float] = []
    while len(radii) < n:
        r = rng.uniform(*BALL_RADII)
        rho, phi = rng.uniform(0.0, BALL_OFFSET), rng.uniform(0.0, 2 * np.pi)
        c = np.array([rho * np.cos(phi), rho * np.sin(phi)])
        if rho + r >= BALL_EXTENT:
            continue
        if any(np.linalg.norm(c - c0) < r + r0 + BALL_GAP for c0, r0 in zip(centres, radii, strict=True)):
            continue
        centres.append(c)
        radii.append(r)
    return np.array(centres), np.array(radii)


def _ball_params(rng: np.random.Generator) -> dict:
    centres, radii = paper_disks(rng)
    return {"centres": centres, "radii": radii, "values": np.full(2, BALL_VALUE)}


def _signed_ball_params(rng: np.random.Generator) -> dict:
    centres, radii = disjoint_disks(rng, 2, SIGNED_RADII, SIGNED_MARGIN, SIGNED_GAP)
    return {"centres": centres, "radii": radii, "values": np.array(SIGNED_VALUES)}


def _mixed_ball_params(rng: np.random.Generator) -> dict:
    centres, radii = paper_disks(rng)
    values = BALL_BACKGROUND + rng.choice([-1.0, 1.0], 2) * rng.uniform(*MIXED_CONTRAST, 2)
    return {"centres": centres, "radii": radii, "values": values}


_PARAMS: dict[str, Callable[[np.random.Generator], dict]] = {
    "bars": _bar_params,
    "balls": _ball_params,
    "balls-signed": _signed_ball_params,
    "balls-mixed": _mixed_ball_params,
    "ktc": _ktc_params,
}


def render(name: str, params: dict, size: int = 64) -> np.ndarray:
    """Render an image of family ``name`` from its parameters."""
    if name == "bars":
        return render_bar(params["angle"], size)
    if name in BALL_FAMILIES:
        return render_balls(np.asarray(params["centres"]), np.asarray(params["radii"]),
                            np.asarray(params["values"]), ball_background(name), size)
    if name == "ktc":
        return render_ktc(params, size)
    raise ValueError(f"unknown image family {name!r}; choose from {list(IMAGE_DATASETS)}")


def image_from_seed(name: str, item_seed: int, size: int = 64) -> tuple[np.ndarray, dict]:
    """The image of family ``name`` drawn from ``item_seed`` and its parameters."""
    if name not in _PARAMS:
        raise ValueError(f"unknown image family {name!r}; choose from {list(IMAGE_DATASETS)}")
    if size < 8:
        raise ValueError(f"image size must be at least 8, got {size}")
    params = _PARAMS[name](np.random.default_rng(item_seed))
    return render(name, params, size), params


def item_seed(split: str, seed: int, index: int) -> int:
    """Item seed of image ``index`` of ``split`` for dataset seed ``seed`` (disjoint splits)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not (0 <= index < PER_SEED and 0 <= seed < 1000):
        raise ValueError(f"need 0 <= index < {PER_SEED} and 0 <= seed < 1000, got {index}, {seed}")
    return (TEST_OFFSET if split == "test" else 0) + seed * PER_SEED + index


def make_images(
    name: str, n: int, split: str = "train", seed: int = 0, size: int = 64
) -> tuple[np.ndarray, list[dict]]:
    """``n`` images of family ``name``: float32 ``(n, size, size)`` and their parameters."""
    pairs = [image_from_seed(name, item_seed(split, seed, i), size) for i in range(n)]
    images = np.stack([p[0] for p in pairs]) if pairs else np.empty((0, size, size), np.float32)
    return images, [p[1] for p in pairs]


def heldout_image(name: str, index: int, size: int = 64) -> tuple[np.ndarray, dict]:
    """The ``index``-th held-out (test split, seed 0) image of family ``name`` and its parameters.

    Never part of any training set; ``simulate --phantom balls --seed S`` uses ``index = S``.
    """
    return image_from_seed(name, item_seed("test", 0, index), size)
