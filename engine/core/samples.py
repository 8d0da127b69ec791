"""The sample images that ship with stylelab (`samples/`, credited in `samples/SOURCES.md`): one photo to
stylise and three public-domain paintings, so a clone on its own can try everything."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"
CONTENTS = {"Tübingen, Neckarfront (photo)": "tubingen.jpg"}
STYLES = {
    "The Starry Night (van Gogh)": "starry_night.jpg",
    "The Scream (Munch)": "the_scream.jpg",
    "The Shipwreck (Turner)": "shipwreck.jpg",
}


def sample_path(file_name: str) -> Path:
    """The path of a shipped sample, by its file name (e.g. "tubingen.jpg")."""
    path = SAMPLES_DIR / file_name
    if path.parent != SAMPLES_DIR or not path.is_file():
        raise FileNotFoundError(f"no sample image {file_name!r} in {SAMPLES_DIR}")
    return path


def sample_bytes(file_name: str) -> bytes:
    return sample_path(file_name).read_bytes()
