"""Named request mixes: which images, which SLAs, which endpoint, in what proportions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageKind:
    name: str
    format: str  # JPEG, PNG or WEBP (Pillow's names)
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return f"image/{self.format.lower()}"


PHOTO = ImageKind("jpeg-640x480", "JPEG", 640, 480)
LARGE_PHOTO = ImageKind("jpeg-1280x960", "JPEG", 1280, 960)
THUMBNAIL = ImageKind("jpeg-96x96", "JPEG", 96, 96)
SCREENSHOT = ImageKind("png-320x240", "PNG", 320, 240)
WEB = ImageKind("webp-256x256", "WEBP", 256, 256)

SLA_CLASSES = ("accuracy", "latency", "both", "none")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    images: dict[ImageKind, float]  # kind -> weight
    slas: dict[str, float]  # SLA class -> weight
    batch_share: float = 0.0  # the share of requests sent to /v1/classify/batch
    batch_images: int = 4
    best_effort_share: float = 0.0  # the share of SLA requests that ask on_miss=best_effort instead of a 422
    # A latency SLA is a member's expected latency at rest times a factor drawn from this range: loose enough to be
    # met when the server is idle, tight enough that queueing under load makes the router pick faster members.
    latency_factor: tuple[float, float] = (3.0, 15.0)


SCENARIOS = {s.name: s for s in (
    Scenario("mixed", "photos, large photos, thumbnails, PNG and WebP; every SLA class; 10% batch requests of 4; "
             "20% of SLA requests best-effort",
             {PHOTO: 50, LARGE_PHOTO: 10, THUMBNAIL: 10, SCREENSHOT: 15, WEB: 15},
             {"accuracy": 30, "latency": 30, "both": 20, "none": 20}, batch_share=0.1, best_effort_share=0.2),
    Scenario("smoke", "small JPEGs and PNGs, every SLA class, generous latency SLAs: a quick check that all paths answer",
             {THUMBNAIL: 70, SCREENSHOT: 30}, {"accuracy": 25, "latency": 25, "both": 25, "none": 25},
             batch_share=0.1, latency_factor=(20.0, 50.0)),
    Scenario("accuracy", "photos with an accuracy floor only (a member's accuracy, drawn per request)",
             {PHOTO: 1}, {"accuracy": 1}),
    Scenario("latency", "photos with a latency bound only", {PHOTO: 1}, {"latency": 1}),
    Scenario("photos", "photos without an SLA: the default member (capacity of the most accurate by default)",
             {PHOTO: 1}, {"none": 1}),
    Scenario("batch", "batch requests of 8 photos, every SLA class", {PHOTO: 1}, {"accuracy": 1, "latency": 1, "none": 1},
             batch_share=1.0, batch_images=8, latency_factor=(8.0, 20.0)),
)}


class UnknownScenario(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise UnknownScenario(name) from None
