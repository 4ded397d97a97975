"""The embedded latency store: one SQLite file of latency records, so nothing is measured twice.

A record is keyed by (architecture hash, hardware id, runtime, precision, batch, resolution) and carries
p50/p90/p99 in ms, the number of runs, the spread, its provenance (measured, predicted, published) and
free-form details (thread settings, versions). Writes are single transactions: a profile interrupted
midway leaves every finished record and no partial one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from effx_serve.core.errors import UserError
from effx_serve.core.fs import cache_dir

PROVENANCES = ("measured", "predicted", "published")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS latency (
    arch_hash TEXT NOT NULL, hardware_id TEXT NOT NULL, runtime TEXT NOT NULL, precision TEXT NOT NULL,
    batch INTEGER NOT NULL, resolution INTEGER NOT NULL, provenance TEXT NOT NULL,
    p50_ms REAL NOT NULL, p90_ms REAL NOT NULL, p99_ms REAL NOT NULL, runs INTEGER NOT NULL, spread REAL NOT NULL,
    model TEXT NOT NULL, details TEXT NOT NULL, recorded_at REAL NOT NULL,
    PRIMARY KEY (arch_hash, hardware_id, runtime, precision, batch, resolution, provenance)
)
"""

# Column names are interpolated into SQL, so only these may be asked for.
_COLUMNS = {"arch_hash", "hardware_id", "runtime", "precision", "batch", "resolution", "provenance", "model"}


@dataclass(frozen=True)
class LatencyKey:
    arch_hash: str
    hardware_id: str
    runtime: str
    precision: str
    batch: int
    resolution: int


@dataclass(frozen=True)
class LatencyRecord:
    key: LatencyKey
    provenance: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    runs: int
    spread: float  # interquartile range / median
    model: str = ""
    details: dict = field(default_factory=dict)
    recorded_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.provenance not in PROVENANCES:
            raise UserError(f"provenance must be one of {', '.join(PROVENANCES)}, got '{self.provenance}'")
        if not 0 <= self.p50_ms <= self.p90_ms <= self.p99_ms:
            raise UserError(f"latency percentiles must satisfy 0 <= p50 <= p90 <= p99, got {self.p50_ms}, {self.p90_ms}, {self.p99_ms}")


class LatencyStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / "latency.sqlite"
        try:
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as error:
            raise UserError(f"latency store {self.path} cannot be opened ({error}); move it away to start a new one") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LatencyStore:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def put(self, record: LatencyRecord) -> None:
        row = asdict(record.key) | {k: v for k, v in asdict(record).items() if k != "key"}
        row["details"] = json.dumps(record.details, sort_keys=True)
        with self._db:  # one transaction: the record is there whole or not at all
            self._db.execute(
                f"INSERT OR REPLACE INTO latency ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
            )

    def get(self, key: LatencyKey, provenance: str | None = None) -> LatencyRecord | None:
        """The record for `key`: of that provenance, or else the best one (measured, then predicted, then published)."""
        records = self.find(key)
        if provenance is not None:
            records = [r for r in records if r.provenance == provenance]
        return min(records, key=lambda r: PROVENANCES.index(r.provenance), default=None)

    def find(self, key: LatencyKey | None = None, **where) -> list[LatencyRecord]:
        unknown = set(where) - _COLUMNS
        if unknown:
            raise UserError(f"latency records have no column {', '.join(sorted(unknown))} (columns: {', '.join(sorted(_COLUMNS))})")
        conditions = asdict(key) if key is not None else {}
        conditions.update(where)
        sql = "SELECT * FROM latency" + (" WHERE " + " AND ".join(f"{c} = ?" for c in conditions) if conditions else "")
        cursor = self._db.execute(sql + " ORDER BY model, hardware_id, runtime, precision, resolution, batch, provenance", tuple(conditions.values()))
        names = [d[0] for d in cursor.description]
        return [_record(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


def _record(row: dict) -> LatencyRecord:
    key = LatencyKey(*(row.pop(name) for name in ("arch_hash", "hardware_id", "runtime", "precision", "batch", "resolution")))
    row["details"] = json.loads(row["details"])
    return LatencyRecord(key=key, **row)
