"""Example pictures for the demo page, drawn at start-up (no dataset images are shipped).

Simple scenes in the spirit of :mod:`vggcifar.testing`: flat shapes on plausible backgrounds, at
a size a user might upload. They exercise the whole path (resize, RGB) rather than promise a
particular answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _sky_plane(d: ImageDraw.ImageDraw, s: int) -> None:
    d.rectangle([0, 0, s, s], fill=(135, 185, 235))
    d.polygon([(s * .15, s * .52), (s * .85, s * .45), (s * .9, s * .5), (s * .15, s * .58)],
              fill=(225, 225, 230))                                       # fuselage
    d.polygon([(s * .45, s * .5), (s * .6, s * .2), (s * .66, s * .2), (s * .58, s * .5)],
              fill=(200, 200, 210))                                       # wing
    d.polygon([(s * .45, s * .52), (s * .55, s * .8), (s * .61, s * .8), (s * .57, s * .52)],
              fill=(190, 190, 200))                                       # wing
    d.polygon([(s * .15, s * .52), (s * .1, s * .35), (s * .18, s * .35), (s * .24, s * .52)],
              fill=(210, 210, 220))                                       # tail


def _sea_ship(d: ImageDraw.ImageDraw, s: int) -> None:
    d.rectangle([0, 0, s, s * .6], fill=(170, 205, 235))
    d.rectangle([0, s * .6, s, s], fill=(30, 80, 140))
    d.polygon([(s * .15, s * .55), (s * .85, s * .55), (s * .75, s * .7), (s * .25, s * .7)],
              fill=(60, 60, 70))                                          # hull
    d.rectangle([s * .35, s * .4, s * .6, s * .55], fill=(235, 235, 235))  # cabin
    d.rectangle([s * .45, s * .28, s * .5, s * .4], fill=(180, 40, 40))   # funnel


def _road_truck(d: ImageDraw.ImageDraw, s: int) -> None:
    d.rectangle([0, 0, s, s * .65], fill=(190, 210, 225))
    d.rectangle([0, s * .65, s, s], fill=(90, 90, 95))
    d.rectangle([s * .1, s * .3, s * .65, s * .7], fill=(200, 40, 35))    # box
    d.rectangle([s * .65, s * .42, s * .88, s * .7], fill=(220, 200, 40))  # cab
    d.rectangle([s * .7, s * .46, s * .84, s * .56], fill=(150, 200, 230))  # window
    for cx in (.22, .5, .78):
        d.ellipse([s * (cx - .08), s * .64, s * (cx + .08), s * .8], fill=(20, 20, 20))


def _grass_frog(d: ImageDraw.ImageDraw, s: int) -> None:
    d.rectangle([0, 0, s, s], fill=(110, 90, 60))
    d.ellipse([s * .2, s * .35, s * .8, s * .8], fill=(70, 150, 50))      # body
    for cx in (.35, .65):
        d.ellipse([s * (cx - .09), s * .25, s * (cx + .09), s * .43], fill=(80, 165, 60))
        d.ellipse([s * (cx - .04), s * .3, s * (cx + .04), s * .38], fill=(10, 10, 10))


def _field_horse(d: ImageDraw.ImageDraw, s: int) -> None:
    d.rectangle([0, 0, s, s * .55], fill=(160, 200, 230))
    d.rectangle([0, s * .55, s, s], fill=(90, 150, 60))
    d.ellipse([s * .25, s * .38, s * .7, s * .6], fill=(120, 70, 35))     # body
    d.polygon([(s * .62, s * .45), (s * .75, s * .2), (s * .85, s * .25), (s * .7, s * .5)],
              fill=(120, 70, 35))                                         # neck and head
    for x in (.3, .38, .58, .65):
        d.rectangle([s * x, s * .55, s * (x + .04), s * .8], fill=(100, 60, 30))


SCENES = {"airplane": _sky_plane, "ship": _sea_ship, "truck": _road_truck, "frog": _grass_frog,
          "horse": _field_horse}


def write_examples(folder: str | Path, size: int = 160, seed: int = 0) -> list[Path]:
    """Draw the example scenes as PNG files in ``folder``; returns their paths.

    A little noise and blur make them look less like vector art (closer to a photo after the
    32x32 resize).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name, draw in SCENES.items():
        img = Image.new("RGB", (size, size))
        draw(ImageDraw.Draw(img), size)
        img = img.filter(ImageFilter.GaussianBlur(1.2))
        arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 6, (size, size, 3)).astype(np.int16)
        path = folder / f"{name}-drawing.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths
