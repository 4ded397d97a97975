"""What the server can route to: the members of a model repository, with this hardware's latency figures.

Read from manifest.json at start, and again when a watching server sees the repository change (serve.server).
For every member it keeps the latency records that best describe the hardware the server runs on, in this
order of preference: records of the detected hardware id measured with the runtime the backend uses,
measured with another runtime, predicted ones, and last, when the repository knows nothing of this
hardware, the records of the hardware it was built on. The chosen records' provenance travels to
/v1/models, /v1/hardware and the logs, so nobody mistakes a roofline guess for a measurement. Online
corrections (serve.estimates) then fit them to what the server observes.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path

from effx_serve.core.errors import UserError
from effx_serve.hardware.ids import hardware_class as hardware_class_of
from effx_serve.repository import manifest as manifest_io
from effx_serve.serve.errors import UnknownName


@dataclass(frozen=True)
class LatencyProfile:
    """p50 service time per batch size on one (hardware, runtime), with where the figures come from."""

    hardware_id: str
    runtime: str
    provenance: str  # measured | predicted | published
    p50_ms: tuple[tuple[int, float], ...]  # (batch, p50 ms), batch ascending
    matches_hardware: bool  # False: borrowed from another hardware id (no record for this one)
    # service_ms by batch size, as computed: routing asks for the same few sizes a dozen times per request
    _known: dict[int, float] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def service_ms(self, batch: int) -> float:
        """Service time of one batch: interpolated linearly between profiled sizes; beyond the largest,
        as many full largest batches as needed (the server never forms a batch it has no figure for)."""
        known = self._known.get(batch)
        if known is None:
            known = self._known[batch] = self._interpolated_ms(batch)
        return known

    def _interpolated_ms(self, batch: int) -> float:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, not {batch}")
        sizes = [size for size, _ in self.p50_ms]
        largest, largest_ms = self.p50_ms[-1]
        if batch > largest:
            full, rest = divmod(batch, largest)
            return full * largest_ms + (self.service_ms(rest) if rest else 0.0)
        index = bisect.bisect_left(sizes, batch)
        if sizes[index] == batch:
            return self.p50_ms[index][1]
        if index == 0:  # below the smallest profiled batch: scale it down per image, never below zero
            smallest, smallest_ms = self.p50_ms[0]
            return smallest_ms * batch / smallest
        (b0, t0), (b1, t1) = self.p50_ms[index - 1], self.p50_ms[index]
        return t0 + (t1 - t0) * (batch - b0) / (b1 - b0)

    def describe(self) -> str:
        where = self.hardware_id if self.matches_hardware else f"{self.hardware_id}, not this hardware"
        return f"{self.provenance} ({where}, {self.runtime})"


@dataclass(frozen=True)
class Member:
    name: str
    family: str
    accuracy: float  # top-1 on the manifest's dataset
    accuracy_provenance: str
    resolution: int
    model_path: Path
    input_name: str
    output_name: str
    labels: tuple[str, ...]
    latency: LatencyProfile
    macs: int
    params: int

    @property
    def max_batch(self) -> int:
        return self.latency.p50_ms[-1][0]


@dataclass(frozen=True)
class Catalog:
    repository: Path
    hardware_id: str
    hardware_class: str
    family: str  # the family routed to when a request pins none
    families: dict[str, tuple[str, ...]]  # every family -> its member names, fastest first
    members: dict[str, Member]
    dataset: str
    notes: tuple[str, ...] = field(default=())
    members_planned: int | None = None  # a partial repository: a build is still adding members up to this many

    @property
    def building(self) -> str | None:
        """What a partial repository says of itself (None when complete)."""
        if self.members_planned is None:
            return None
        return f"{len(self.members)} of {self.members_planned} members so far; a build is adding the rest"

    def family_members(self, family: str | None = None) -> list[Member]:
        name = family or self.family
        if name not in self.families:
            raise UnknownName(f"unknown family '{name}'; this repository has: {', '.join(sorted(self.families))}")
        return [self.members[member] for member in self.families[name]]

    def member(self, name: str) -> Member:
        if name not in self.members:
            raise UnknownName(f"unknown member '{name}'; this repository has: {', '.join(sorted(self.members))}")
        return self.members[name]


_PROVENANCE_RANK = {"measured": 0, "published": 1, "predicted": 2}


def choose_profile(records: list[dict], hardware_id: str, runtime: str, fallback_hardware: str) -> LatencyProfile:
    """The records that best describe `hardware_id` under `runtime`; see the module docstring."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["hardware_id"], record["runtime"], record["provenance"]), []).append(record)

    def preference(key: tuple[str, str, str]) -> tuple:
        hardware, record_runtime, provenance = key
        return (hardware != hardware_id, hardware != fallback_hardware, _PROVENANCE_RANK.get(provenance, 3), record_runtime != runtime,
                hardware, record_runtime)

    if not groups:
        raise UserError("a member has no latency records; rebuild the repository with 'effx-serve build-repo'")
    best = min(groups, key=preference)
    points: dict[int, float] = {}
    for record in groups[best]:
        if record["batch"] >= 1 and math.isfinite(record["p50_ms"]) and record["p50_ms"] > 0:
            points[record["batch"]] = record["p50_ms"]
    if not points:
        raise UserError(f"no usable latency record for {best[0]} ({best[1]}); rebuild the repository")
    return LatencyProfile(best[0], best[1], best[2], tuple(sorted(points.items())), best[0] == hardware_id)


def _choose_family(families: list[dict], hardware_id: str, hardware_class: str) -> str:
    """The family searched for this hardware id, else one that serves its class, else the first."""
    for test in (lambda f: f["searched_for"] == hardware_id, lambda f: hardware_class in f["hardware_classes"], lambda f: True):
        for family in families:
            if test(family):
                return family["name"]
    raise UserError("the manifest lists no family")


def load(repository: str | Path, hardware_id: str, runtime: str, family: str | None = None) -> Catalog:
    """The catalog of a repository for a server on `hardware_id` whose backend runs `runtime`."""
    repository = Path(repository)
    data = manifest_io.read(repository)
    hardware_class = hardware_class_of(hardware_id)
    chosen = family or _choose_family(data["families"], hardware_id, hardware_class)
    labels = tuple(data["dataset"]["labels"])
    members: dict[str, Member] = {}
    family_of = {name: f["name"] for f in data["families"] for name in f["members"]}
    for name, entry in data["members"].items():
        model = entry["model"]
        path = repository / model["path"]
        if not path.is_file():
            raise UserError(f"{path} is missing; rebuild the repository with 'effx-serve build-repo' or check it with 'effx-serve check-repo'")
        members[name] = Member(name=name, family=family_of.get(name, ""), accuracy=float(entry["accuracy"]["top1"]),
                               accuracy_provenance=entry["accuracy"]["provenance"], resolution=int(entry["resolution"]), model_path=path,
                               input_name=model["input"]["name"], output_name=model["output"]["name"], labels=labels,
                               latency=choose_profile(entry["latency"], hardware_id, runtime, data["target_hardware"]),
                               macs=int(entry["macs"]), params=int(entry["params"]))
    families = {f["name"]: tuple(sorted(f["members"], key=lambda n: (members[n].latency.service_ms(1), n))) for f in data["families"]}
    if chosen not in families:
        raise UserError(f"unknown family '{chosen}'; the repository has: {', '.join(sorted(families))}")
    notes = []
    borrowed = sorted({m.latency.describe() for m in members.values() if not (m.latency.matches_hardware and m.latency.provenance == "measured")})
    if borrowed:
        notes.append(f"no measured latency of this hardware ({hardware_id}) for some members; using {', '.join(borrowed)}, "
                     "corrected online from observed timings")
    planned = data.get("partial", {}).get("members_planned")
    return Catalog(repository, hardware_id, hardware_class, chosen, families, members, data["dataset"]["name"], tuple(notes), planned)
