"""Procedurally drawn car-cabin scenes for the ten distracted-driver classes.

The camera sits on the passenger side, as in the State Farm frames: the
driver faces left towards the steering wheel, the side window is behind the
head, the radio and centre console are in the right foreground and the rear
seat at the right edge.

Each class moves the arms, hands and head into its own region of the frame
(a phone low on the right, a cup at the mouth, an arm stretched to the rear
seat...), so the cue is large and spatially distinct. Each driver has a
``DriverLook``: colours, lighting, seat position and camera placement, drawn
once per driver. Per image there is only small pose jitter and sensor noise.
So a model that has seen a driver recognises that driver's colours, while a
model judged on unseen drivers must rely on the pose, which is what makes a
driver-grouped split harder than a random one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from distracted_driver.data.layout import CLASSES, IMAGE_SIZE

WIDTH, HEIGHT = IMAGE_SIZE

Point = tuple[float, float]
Color = tuple[int, int, int]  # BGR

SKIN_TONES: tuple[Color, ...] = (
    (189, 210, 242),
    (160, 190, 230),
    (130, 170, 215),
    (105, 145, 200),
    (80, 115, 165),
    (60, 90, 135),
    (45, 65, 100),
    (150, 175, 205),
)
HAIR_COLOURS: tuple[Color, ...] = (
    (20, 20, 25),
    (30, 45, 70),
    (40, 70, 120),
    (90, 140, 190),
    (120, 120, 125),
    (25, 35, 50),
)
# Bright, saturated props so that a phone or a cup stands out in any cabin.
PHONE_COLOURS: tuple[Color, ...] = ((250, 250, 250), (235, 225, 120), (200, 120, 250), (90, 230, 250))
CUP_COLOURS: tuple[Color, ...] = ((40, 40, 230), (250, 250, 250), (30, 200, 250), (60, 200, 60))


@dataclass(frozen=True)
class DriverLook:
    """Everything that identifies one driver across all of their images."""

    skin: Color
    hair: Color
    clothing: Color
    trousers: Color
    long_sleeves: bool
    seat: Color
    cabin: Color
    outside: Color
    phone: Color
    cup: Color
    glasses: bool
    head_radius: float
    seat_shift: Point  # where this driver sits, in pixels
    brightness: float
    tint: tuple[float, float, float]  # per-channel gain (colour temperature)
    light_direction: float  # radians; where the window light comes from
    light_strength: float
    camera_shift: Point
    camera_angle: float  # degrees
    camera_scale: float
    noise_gain: float = 1.0  # sensor noise relative to a daylight frame
    layout: str = "sedan"  # the car's interior: "sedan" (every training image) or "van" (a shifted batch)


def _hsv_colour(rng: np.random.Generator, s_range: tuple[int, int], v_range: tuple[int, int]) -> Color:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(*s_range), rng.integers(*v_range)]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def random_look(rng: np.random.Generator) -> DriverLook:
    """A new driver: colours and lighting vary widely, geometry only a little."""
    return DriverLook(
        skin=_pick(rng, SKIN_TONES),
        hair=_pick(rng, HAIR_COLOURS),
        clothing=_hsv_colour(rng, (40, 230), (60, 230)),
        trousers=_hsv_colour(rng, (20, 120), (40, 120)),
        long_sleeves=bool(rng.random() < 0.6),
        seat=_hsv_colour(rng, (0, 90), (30, 110)),
        cabin=_hsv_colour(rng, (0, 60), (40, 90)),
        outside=_hsv_colour(rng, (30, 160), (150, 240)),
        phone=_pick(rng, PHONE_COLOURS),
        cup=_pick(rng, CUP_COLOURS),
        glasses=bool(rng.random() < 0.3),
        head_radius=float(rng.uniform(42, 50)),
        seat_shift=(float(rng.uniform(-18, 18)), float(rng.uniform(-10, 10))),
        brightness=float(rng.uniform(0.75, 1.2)),
        tint=tuple(float(x) for x in rng.uniform(0.88, 1.12, 3)),
        light_direction=float(rng.uniform(0, 2 * np.pi)),
        light_strength=float(rng.uniform(0.0, 0.3)),
        camera_shift=(float(rng.uniform(-20, 20)), float(rng.uniform(-14, 14))),
        camera_angle=float(rng.uniform(-4, 4)),
        camera_scale=float(rng.uniform(0.92, 1.08)),
    )


# --- shifted batches: what live cameras may bring that training never saw ---------------------------

SHIFTS = ("night", "angle", "cabin")


def shifted_look(look: DriverLook, shift: str, rng: np.random.Generator) -> DriverLook:
    """The same driver under a shift the training data never shows.

    ``night``: a dark cabin lit by a weak bluish light from one side, a black window, and the
    sensor's gain (noise) turned up. ``angle``: the camera mounted elsewhere, rotated 14-22
    degrees, moved and wider. ``cabin``: another car, a van with a light interior, a high
    dashboard and a large side window.
    """
    if shift == "night":
        return replace(
            look,
            brightness=float(rng.uniform(0.22, 0.34)),
            tint=(1.2, 0.95, 0.75),
            light_strength=float(rng.uniform(0.5, 0.8)),
            outside=(40, 25, 15),
            noise_gain=float(rng.uniform(2.5, 3.5)),
        )
    if shift == "angle":
        side = 1 if rng.random() < 0.5 else -1
        return replace(
            look,
            camera_angle=side * float(rng.uniform(14, 22)),
            camera_scale=float(rng.uniform(0.78, 0.86)),
            camera_shift=(float(rng.uniform(40, 70)) * side, float(rng.uniform(25, 45))),
        )
    if shift == "cabin":
        return replace(
            look,
            layout="van",
            cabin=_hsv_colour(rng, (0, 40), (170, 225)),
            seat=_hsv_colour(rng, (150, 230), (120, 190)),
        )
    raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, not {shift!r}")


# --- poses --------------------------------------------------------------------
# An arm is (shoulder, elbow, hand). The near arm is the driver's right arm,
# closest to the camera; the far arm is the left one.

NEAR_SHOULDER = (418, 268)
FAR_SHOULDER = (318, 258)
HEAD_CENTRE = (352, 168)

NEAR_ON_WHEEL = (NEAR_SHOULDER, (335, 385), (182, 300))
FAR_ON_WHEEL = (FAR_SHOULDER, (240, 305), (150, 196))


@dataclass(frozen=True)
class Pose:
    near_arm: tuple[Point, Point, Point]
    far_arm: tuple[Point, Point, Point]
    head: str = "ahead"  # ahead | down | passenger | behind
    head_offset: Point = (0, 0)
    near_prop: str | None = None  # phone | phone_ear | cup
    far_prop: str | None = None


POSES: dict[str, Pose] = {
    "c0": Pose(NEAR_ON_WHEEL, FAR_ON_WHEEL),
    "c1": Pose((NEAR_SHOULDER, (440, 385), (345, 400)), FAR_ON_WHEEL, "down", (-4, 10), near_prop="phone"),
    "c2": Pose((NEAR_SHOULDER, (455, 330), (384, 186)), FAR_ON_WHEEL, near_prop="phone_ear"),
    "c3": Pose(
        (NEAR_SHOULDER, (330, 405), (188, 318)),
        (FAR_SHOULDER, (300, 350), (258, 318)),
        "down",
        (-4, 10),
        far_prop="phone",
    ),
    "c4": Pose(NEAR_ON_WHEEL, (FAR_SHOULDER, (252, 232), (318, 150)), far_prop="phone_ear"),
    "c5": Pose((NEAR_SHOULDER, (470, 340), (528, 382)), FAR_ON_WHEEL, "down", (6, 6)),
    "c6": Pose((NEAR_SHOULDER, (430, 345), (312, 200)), FAR_ON_WHEEL, near_prop="cup"),
    "c7": Pose(((428, 255), (505, 222), (585, 180)), FAR_ON_WHEEL, "behind", (18, -4)),
    "c8": Pose((NEAR_SHOULDER, (468, 178), (372, 118)), FAR_ON_WHEEL),
    "c9": Pose(NEAR_ON_WHEEL, FAR_ON_WHEEL, "passenger", (16, 0)),
}
assert tuple(POSES) == CLASSES


# --- drawing ------------------------------------------------------------------


def _i(p: Point) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _shade(colour: Color, factor: float) -> Color:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)


def _poly(img, points, colour) -> None:
    cv2.fillPoly(img, [np.array([_i(p) for p in points], np.int32)], colour, cv2.LINE_AA)


def _limb(img, a: Point, b: Point, colour: Color, width: int) -> None:
    """A limb segment with a darker outline, so it reads against the torso."""
    cv2.line(img, _i(a), _i(b), _shade(colour, 0.55), width + 6, cv2.LINE_AA)
    cv2.line(img, _i(a), _i(b), colour, width, cv2.LINE_AA)


def _background(img, look: DriverLook, rng: np.random.Generator) -> None:
    if look.layout == "van":
        _van_background(img, look, rng)
        return
    cv2.rectangle(img, (0, 0), (WIDTH - 1, HEIGHT - 1), look.cabin, -1)  # much faster than img[:] = ...
    # Windshield (top left), driver's side window behind the head, rear window.
    _poly(img, [(0, 0), (250, 0), (165, 150), (0, 190)], _shade(look.outside, 1.05))
    _poly(img, [(210, 18), (470, 8), (470, 175), (238, 195)], look.outside)
    _poly(img, [(525, 25), (640, 25), (640, 140), (525, 150)], _shade(look.outside, 0.9))
    # Things passing by the window: a few soft blobs that change with every frame.
    for _ in range(3):
        centre = (rng.uniform(220, 460), rng.uniform(30, 170))
        cv2.circle(img, _i(centre), int(rng.uniform(8, 22)), _shade(look.outside, rng.uniform(0.6, 0.85)), -1)
    cv2.rectangle(img, (470, 0), (525, 330), _shade(look.cabin, 0.7), -1)  # B-pillar
    # Rear seat at the right edge.
    _poly(img, [(535, 160), (640, 150), (640, 360), (545, 370)], _shade(look.seat, 0.8))
    # Dashboard and steering column.
    _poly(img, [(0, 225), (150, 205), (230, 300), (255, 480), (0, 480)], _shade(look.cabin, 0.55))
    cv2.line(img, (150, 290), (40, 330), (35, 35, 35), 26, cv2.LINE_AA)
    # Centre console with the radio's lit display.
    _poly(img, [(470, 340), (600, 330), (620, 480), (455, 480)], _shade(look.cabin, 0.5))
    cv2.rectangle(img, (492, 352), (578, 392), (20, 20, 20), -1)
    cv2.rectangle(img, (498, 358), (572, 376), (230, 220, 60), -1)


def _van_background(img, look: DriverLook, rng: np.random.Generator) -> None:
    """A van's cab: a tall side window reaching the roof, a high flat dashboard, no rear seat but a bulkhead."""
    cv2.rectangle(img, (0, 0), (WIDTH - 1, HEIGHT - 1), look.cabin, -1)
    _poly(img, [(0, 0), (190, 0), (120, 120), (0, 140)], _shade(look.outside, 1.05))
    _poly(img, [(170, 0), (560, 0), (560, 215), (190, 230)], look.outside)
    for _ in range(3):
        centre = (rng.uniform(200, 540), rng.uniform(20, 200))
        cv2.circle(img, _i(centre), int(rng.uniform(10, 28)), _shade(look.outside, rng.uniform(0.6, 0.85)), -1)
    cv2.rectangle(img, (560, 0), (640, 480), _shade(look.cabin, 0.8), -1)  # bulkhead behind the seats
    cv2.rectangle(img, (0, 0), (640, 14), _shade(look.cabin, 0.6), -1)  # roof lining
    _poly(img, [(0, 170), (210, 165), (250, 330), (260, 480), (0, 480)], _shade(look.cabin, 0.7))
    cv2.line(img, (170, 300), (60, 320), (50, 50, 50), 30, cv2.LINE_AA)
    _poly(img, [(480, 300), (620, 300), (630, 480), (470, 480)], _shade(look.cabin, 0.75))
    cv2.rectangle(img, (500, 318), (600, 350), (25, 25, 25), -1)
    cv2.rectangle(img, (506, 324), (594, 344), (80, 200, 240), -1)


def _seat(img, look: DriverLook, shift: Point) -> None:
    sx, sy = shift
    _poly(img, [(345 + sx, 105 + sy), (475 + sx, 95 + sy), (490 + sx, 440 + sy), (360 + sx, 450 + sy)], look.seat)
    cv2.ellipse(img, _i((430 + sx, 78 + sy)), (48, 34), 0, 0, 360, _shade(look.seat, 0.9), -1, cv2.LINE_AA)


def _body(img, look: DriverLook, shift: Point) -> None:
    sx, sy = shift
    # Thighs run forward (left) from the hips, then the torso and the neck.
    _limb(img, (400 + sx, 455 + sy), (215 + sx, 440 + sy), look.trousers, 70)
    _poly(img, [(300 + sx, 252 + sy), (440 + sx, 255 + sy), (455 + sx, 480), (295 + sx, 480)], look.clothing)
    cv2.rectangle(img, _i((335 + sx, 200 + sy)), _i((372 + sx, 262 + sy)), _shade(look.skin, 0.85), -1)


def _wheel(img) -> None:
    cv2.ellipse(img, (158, 275), (46, 112), -8, 0, 360, (28, 28, 28), 20, cv2.LINE_AA)


def _arm(img, look: DriverLook, arm, far: bool) -> None:
    shoulder, elbow, hand = arm
    factor = 0.8 if far else 1.0
    sleeve = _shade(look.clothing, factor)
    forearm = sleeve if look.long_sleeves else _shade(look.skin, factor)
    _limb(img, shoulder, elbow, sleeve, 30)
    _limb(img, elbow, hand, forearm, 24)
    cv2.circle(img, _i(hand), 15, _shade(look.skin, factor), -1, cv2.LINE_AA)


def _prop(img, look: DriverLook, kind: str | None, hand: Point) -> None:
    x, y = hand
    if kind == "phone":  # held flat, the lit screen towards the driver
        box = cv2.boxPoints(((x - 6, y - 12), (50, 30), -20))
        _poly(img, box, (20, 20, 20))
        inner = cv2.boxPoints(((x - 6, y - 12), (42, 22), -20))
        _poly(img, inner, look.phone)
    elif kind == "phone_ear":  # upright against the ear
        cv2.rectangle(img, _i((x - 13, y - 32)), _i((x + 13, y + 20)), (20, 20, 20), -1)
        cv2.rectangle(img, _i((x - 9, y - 28)), _i((x + 9, y + 16)), look.phone, -1)
    elif kind == "cup":
        top, bottom = (x - 20, y - 40), (x + 20, y + 18)
        cv2.rectangle(img, _i(top), _i(bottom), look.cup, -1)
        cv2.rectangle(img, _i((x - 20, y - 10)), _i((x + 20, y + 2)), _shade(look.cup, 0.5), -1)
        cv2.ellipse(img, _i((x, y - 40)), (20, 6), 0, 0, 360, _shade(look.cup, 0.7), -1, cv2.LINE_AA)
    if kind:
        cv2.circle(img, _i((x + 10, y + 6)), 14, look.skin, -1, cv2.LINE_AA)  # fingers over the prop


def _head(img, look: DriverLook, centre: Point, facing: str) -> None:
    x, y = centre
    r = look.head_radius
    dark = (25, 25, 30)
    if facing == "behind":  # turned to the rear seat: mostly the back of the head
        cv2.circle(img, _i((x, y)), int(r), look.skin, -1, cv2.LINE_AA)
        cv2.ellipse(img, _i((x - 4, y - 4)), (int(r), int(r * 1.02)), 0, 0, 360, look.hair, -1, cv2.LINE_AA)
        cv2.ellipse(img, _i((x + r * 0.55, y + 6)), (9, 15), 0, 0, 360, _shade(look.skin, 0.85), -1)
        return
    if facing == "passenger":  # facing the camera: both eyes, open mouth
        cv2.circle(img, _i((x, y)), int(r), look.skin, -1, cv2.LINE_AA)
        cv2.ellipse(img, _i((x, y - r * 0.35)), (int(r * 1.02), int(r * 0.7)), 0, 180, 360, look.hair, -1)
        for side in (-1, 1):
            eye = (x + side * r * 0.38, y - r * 0.05)
            cv2.ellipse(img, _i(eye), (10, 7), 0, 0, 360, (245, 245, 245), -1, cv2.LINE_AA)
            cv2.circle(img, _i(eye), 5, dark, -1, cv2.LINE_AA)
            cv2.line(img, _i((eye[0] - 11, eye[1] - 13)), _i((eye[0] + 11, eye[1] - 14)), look.hair, 4)
            cv2.ellipse(img, _i((x + side * r, y + 4)), (7, 13), 0, 0, 360, _shade(look.skin, 0.85), -1)
        if look.glasses:
            cv2.line(img, _i((x - r * 0.7, y - r * 0.05)), _i((x + r * 0.7, y - r * 0.05)), dark, 3)
        cv2.ellipse(img, _i((x, y + r * 0.5)), (int(r * 0.3), int(r * 0.17)), 0, 0, 360, (40, 30, 120), -1)
        return
    # Profile facing the wheel (left); looking down moves the eye and nose lower.
    down = 0.25 if facing == "down" else 0.0
    cv2.circle(img, _i((x, y)), int(r), look.skin, -1, cv2.LINE_AA)
    cv2.ellipse(img, _i((x + r * 0.2, y - r * 0.2)), (int(r * 0.9), int(r * 0.85)), 0, 160, 400, look.hair, -1)
    nose = [
        (x - r * 0.9, y - r * (0.15 - down)),
        (x - r * 1.22, y + r * (0.12 + down)),
        (x - r * 0.9, y + r * (0.2 + down)),
    ]
    _poly(img, nose, look.skin)
    eye = (x - r * 0.58, y - r * (0.12 - down))
    cv2.circle(img, _i(eye), 5, dark, -1, cv2.LINE_AA)
    if look.glasses:
        cv2.line(img, _i((eye[0] - 12, eye[1])), _i((x + r * 0.1, eye[1] - 2)), dark, 3)
    cv2.line(img, _i((x - r * 0.85, y + r * (0.5 + down))), _i((x - r * 0.55, y + r * (0.5 + down))), (60, 50, 130), 3)
    cv2.ellipse(img, _i((x + r * 0.15, y + 4)), (9, 15), 0, 0, 360, _shade(look.skin, 0.8), -1, cv2.LINE_AA)


def _jitter(points, rng: np.random.Generator, amount: float):
    return tuple((p[0] + rng.uniform(-amount, amount), p[1] + rng.uniform(-amount, amount)) for p in points)


def _moved(arm, shift: Point):
    return tuple((p[0] + shift[0], p[1] + shift[1]) for p in arm)


def lighting_map(look: DriverLook) -> np.ndarray:
    """Per-pixel gain of this driver's light: brightness, tint and a window gradient."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    along = (xs / WIDTH - 0.5) * np.cos(look.light_direction) + (ys / HEIGHT - 0.5) * np.sin(look.light_direction)
    gain = look.brightness * (1.0 + look.light_strength * along)
    return (gain[..., None] * np.asarray(look.tint, np.float32)).astype(np.float32)


class SensorNoise:
    """A bank of Gaussian noise; each frame takes a random window of it (fast, deterministic)."""

    MARGIN = 64

    def __init__(self, rng: np.random.Generator):
        shape = (HEIGHT + self.MARGIN, WIDTH + self.MARGIN, 3)
        self.bank = rng.standard_normal(shape, dtype=np.float32)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        dy, dx = rng.integers(0, self.MARGIN, 2)
        return self.bank[dy : dy + HEIGHT, dx : dx + WIDTH]


def render(
    look: DriverLook, classname: str, rng: np.random.Generator, light: np.ndarray, noise: SensorNoise
) -> np.ndarray:
    """One 640x480 BGR frame of this driver doing ``classname``."""
    pose = POSES[classname]
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    _background(img, look, rng)
    shift = look.seat_shift
    _seat(img, look, shift)
    _body(img, look, shift)
    _wheel(img)
    far = _jitter(_moved(pose.far_arm, shift), rng, 6)
    near = _jitter(_moved(pose.near_arm, shift), rng, 6)
    head = _jitter(
        [(HEAD_CENTRE[0] + shift[0] + pose.head_offset[0], HEAD_CENTRE[1] + shift[1] + pose.head_offset[1])], rng, 4
    )[0]
    _arm(img, look, far, far=True)
    _prop(img, look, pose.far_prop, far[2])
    _head(img, look, head, pose.head)
    _arm(img, look, near, far=False)
    _prop(img, look, pose.near_prop, near[2])
    return _camera(img, look, rng, light, noise)


def _camera(
    img: np.ndarray, look: DriverLook, rng: np.random.Generator, light: np.ndarray, noise: SensorNoise
) -> np.ndarray:
    angle = look.camera_angle + rng.uniform(-0.6, 0.6)
    matrix = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), angle, look.camera_scale)
    matrix[0, 2] += look.camera_shift[0] + rng.uniform(-3, 3)
    matrix[1, 2] += look.camera_shift[1] + rng.uniform(-3, 3)
    img = cv2.warpAffine(img, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    frame = img.astype(np.float32)
    cv2.multiply(frame, light, dst=frame, scale=rng.uniform(0.95, 1.05))
    cv2.scaleAdd(noise.sample(rng), rng.uniform(2.0, 5.0) * look.noise_gain, frame, dst=frame)
    # Saturating cast; the few slightly negative noisy pixels fold back to small values.
    return cv2.convertScaleAbs(frame)
