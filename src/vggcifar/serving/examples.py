"""Example pictures for the demo page: ten real CIFAR-10 test images, one per class, shipped as
package data (``example_images/<class>.jpg``).

The page may read files only from Gradio's upload folder and its own examples folder (see
:mod:`.demo`), so the pictures are copied into the server's private work folder at start-up
rather than served from wherever the package is installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "example_images"


def shipped_examples() -> list[Path]:
    """The shipped example pictures, sorted by class name (each file is named after its class)."""
    return sorted(EXAMPLES_DIR.glob("*.jpg"))


def example_class(path: str | Path) -> str:
    """The true class of an example picture: its file name without the suffix."""
    return Path(path).stem


def write_examples(folder: str | Path) -> list[Path]:
    """Copy the shipped example pictures into ``folder`` (made if needed); returns the copies'
    paths, sorted by class name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(src, folder / src.name)) for src in shipped_examples()]
