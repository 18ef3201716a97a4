"""Per-image statistics: each one measures what its name says, on frames whose answer is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from distracted_driver.data import image_stats
from distracted_driver.data.cabin import SensorNoise, lighting_map, random_look, render, shifted_look


def _checkerboard(size: int = 64, square: int = 8) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size]
    board = (((ys // square) + (xs // square)) % 2 * 255).astype(np.uint8)
    return cv2.cvtColor(board, cv2.COLOR_GRAY2BGR)


def test_a_flat_grey_frame():
    frame = np.full((48, 64, 3), 100, np.uint8)
    stats = image_stats.image_statistics(frame)
    assert stats == {
        "size": 3072.0,
        "aspect": pytest.approx(64 / 48),
        "brightness": pytest.approx(100.0),
        "contrast": pytest.approx(0.0),
        "sharpness": pytest.approx(0.0),
    }


def test_contrast_is_the_spread_of_grey_levels_and_brightness_their_mean():
    stats = image_stats.image_statistics(_checkerboard())
    assert stats["brightness"] == pytest.approx(127.5)
    assert stats["contrast"] == pytest.approx(127.5)  # half black, half white


def test_sharpness_falls_when_the_frame_is_blurred():
    board = _checkerboard()
    crisp = image_stats.sharpness(image_stats.grey(board))
    blurred = image_stats.sharpness(image_stats.grey(cv2.GaussianBlur(board, (7, 7), 2.0)))
    assert crisp > 10 * blurred > 0


def test_the_grey_level_weights_the_colours_as_opencv_does():
    blue = np.zeros((4, 4, 3), np.uint8)
    blue[..., 0] = 200  # BGR: pure blue counts far less than green in luma
    green = np.zeros((4, 4, 3), np.uint8)
    green[..., 1] = 200
    assert image_stats.brightness(image_stats.grey(blue)) < image_stats.brightness(image_stats.grey(green)) / 4


def test_a_night_frame_is_darker_and_flatter_than_the_same_driver_by_day():
    rng = np.random.default_rng([0, 1, 5])
    day = random_look(rng)
    night = shifted_look(day, "night", rng)
    noise = SensorNoise(np.random.default_rng(0))
    frames = {
        name: render(look, "c0", np.random.default_rng(1), lighting_map(look), noise)
        for name, look in (("day", day), ("night", night))
    }
    stats = {name: image_stats.image_statistics(frame) for name, frame in frames.items()}
    assert stats["night"]["brightness"] < stats["day"]["brightness"] / 2
    assert stats["night"]["contrast"] < stats["day"]["contrast"] / 2
    assert stats["night"]["size"] == stats["day"]["size"] == 640 * 480
