"""The query log of a served copy: one row per image a buyer asked about, in a real database.

SQLite by default (a file path); any SQLAlchemy URL (e.g. postgresql+psycopg://...) works with the
same schema, written with SQLAlchemy Core's portable types. Each row: the buyer, the copy, the time,
the request and the image's place in it, the SHA-256 of the image's bytes (exact repeats), a 16x16
8-bit sketch of it (near repeats: what the stateful detector compares), the label answered, and,
optionally, the image itself (float32 .npy bytes, read back with allow_pickle=False).

Durability: the server answers a request only after the transaction holding its rows has committed;
SQLite runs in WAL mode with synchronous=FULL, so a kill -9 (or a power cut) loses no answered query.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from advforensics.errors import DataFileError, InputValidationError

LOG_FORMAT = "advforensics-query-log/1"
SKETCH_SIDE = 16

metadata = sa.MetaData()
_id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only
queries = sa.Table(
    "queries", metadata,
    sa.Column("id", _id_type, primary_key=True, autoincrement=True),
    sa.Column("buyer", sa.String(128), nullable=False),
    sa.Column("copy_index", sa.Integer, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),  # unix time, seconds
    sa.Column("request_id", sa.String(32), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),  # the image's row in its request
    sa.Column("content_sha256", sa.String(64), nullable=False),
    sa.Column("sketch", sa.LargeBinary, nullable=False),  # SKETCH_SIDE**2 bytes
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("image", sa.LargeBinary, nullable=True),
    sa.Index("ix_queries_buyer_id", "buyer", "id"),
    sa.Index("ix_queries_request", "request_id"),
)
log_info = sa.Table(
    "log_info", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def _area_weights(size: int, side: int) -> np.ndarray:
    """(side, size) matrix averaging `size` pixels into `side` cells by area (a box filter)."""
    weights = np.zeros((side, size))
    edges = np.linspace(0.0, size, side + 1)
    for cell in range(side):
        for pixel in range(size):
            weights[cell, pixel] = max(0.0, min(edges[cell + 1], pixel + 1) - max(edges[cell], pixel))
    return weights / weights.sum(axis=1, keepdims=True)


class Sketcher:
    """The 16x16 grey sketch of (B, C, H, W) images in [0, 1]: channel mean, box-filtered, 8-bit."""

    def __init__(self, height: int, width: int, side: int = SKETCH_SIDE) -> None:
        self.rows = _area_weights(height, side).astype(np.float32)  # (side, H)
        self.cols = _area_weights(width, side).T.astype(np.float32)  # (W, side)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        grey = images.mean(axis=1, dtype=np.float32)  # (B, H, W)
        small = self.rows @ grey @ self.cols  # (B, side, side)
        return np.clip(np.rint(small * 255), 0, 255).astype(np.uint8)  # (B, side, side)


def image_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, image.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def _engine_url(target: str | Path) -> str:
    text = str(target)
    if "://" in text:
        return text
    path = Path(text)
    if path.exists() and path.is_dir():
        raise InputValidationError(f"--log {path} is a directory; give a file (SQLite) or a database URL")
    return f"sqlite:///{path}"


@dataclass(frozen=True)
class LoggedQueries:
    """Rows of the log, in the order they were received (column arrays)."""

    ids: np.ndarray  # (N,) int64
    buyers: np.ndarray  # (N,) str
    copy_indices: np.ndarray  # (N,) int64
    received_at: np.ndarray  # (N,) float64
    request_ids: np.ndarray  # (N,) str
    content_sha256: np.ndarray  # (N,) str
    sketches: np.ndarray  # (N, side, side) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.ids)

    def of(self, buyer: str) -> LoggedQueries:
        keep = self.buyers == buyer
        return LoggedQueries(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))

    def by_buyer(self) -> dict[str, LoggedQueries]:
        """Every buyer's rows, in name order, split in one pass (`of` per buyer rescans the whole log)."""
        names, inverse = np.unique(self.buyers, return_inverse=True)
        order = np.argsort(inverse, kind="stable")  # keeps each buyer's rows in log order
        bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
        fields = list(self.__dataclass_fields__)
        return {str(name): LoggedQueries(*(getattr(self, f)[order[bounds[i]:bounds[i + 1]]] for f in fields))
                for i, name in enumerate(names)}


class QueryLog:
    """The query database: `append` rows (one transaction), `read` them back."""

    def __init__(self, target: str | Path, create: bool = True) -> None:
        url = _engine_url(target)
        if url.startswith("sqlite:///") and not create and not Path(url[len("sqlite:///"):]).is_file():
            raise InputValidationError(f"no query log at {url[len('sqlite:///'):]}")
        self.engine = sa.create_engine(url)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_durable)
        try:
            with self.engine.begin() as connection:
                tables = set(sa.inspect(connection).get_table_names())
                if not tables and create:  # a new database; one holding anything else is refused below
                    metadata.create_all(connection)
                    connection.execute(sa.insert(log_info).values(name="format", value=LOG_FORMAT))
                elif "log_info" not in tables:
                    raise DataFileError(f"{target} is not an advforensics query log")
                found = connection.execute(sa.select(log_info.c.value).where(log_info.c.name == "format")).scalar()
        except sa.exc.DatabaseError as error:
            raise DataFileError(f"{target} is not a query log ({error.orig})") from None
        if found != LOG_FORMAT:
            raise DataFileError(f"{target} is not an advforensics query log")
        if self.engine.dialect.name == "sqlite":  # ours, so now it may change the file's journal mode
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")  # readers never block the writer

    def _info(self, name: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(sa.select(log_info.c.value).where(log_info.c.name == name)).scalar()

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """The (C, H, W) of the copies served into this log (None: nothing served yet)."""
        value = self._info("image_shape")
        return tuple(json.loads(value)) if value is not None else None

    def claim_shape(self, shape: tuple[int, ...]) -> None:
        """Bind the log to the served images' shape; a log of other images is refused."""
        stored = self.image_shape
        if stored is None:
            with self.engine.begin() as connection:
                connection.execute(sa.insert(log_info).values(name="image_shape", value=json.dumps(list(shape))))
        elif stored != tuple(shape):
            raise InputValidationError(f"the query log holds images of shape {list(stored)}, these copies take "
                                       f"{list(shape)}; use another log")

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write rows (dicts of the `queries` columns, no id) in one committed transaction."""
        if rows:
            with self.engine.begin() as connection:
                connection.execute(sa.insert(queries), rows)

    def count(self, buyer: str | None = None) -> int:
        statement = sa.select(sa.func.count()).select_from(queries)
        if buyer is not None:
            statement = statement.where(queries.c.buyer == buyer)
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar())

    def read(self, buyer: str | None = None) -> LoggedQueries:
        columns = [queries.c.id, queries.c.buyer, queries.c.copy_index, queries.c.received_at,
                   queries.c.request_id, queries.c.content_sha256, queries.c.sketch, queries.c.label]
        statement = sa.select(*columns).order_by(queries.c.id)
        if buyer is not None:
            statement = statement.where(queries.c.buyer == buyer)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        side = SKETCH_SIDE
        sketches = np.frombuffer(b"".join(r.sketch for r in rows), dtype=np.uint8).reshape(-1, side, side)
        return LoggedQueries(
            ids=np.array([r.id for r in rows], dtype=np.int64),
            buyers=np.array([r.buyer for r in rows], dtype=str),
            copy_indices=np.array([r.copy_index for r in rows], dtype=np.int64),
            received_at=np.array([r.received_at for r in rows], dtype=np.float64),
            request_ids=np.array([r.request_id for r in rows], dtype=str),
            content_sha256=np.array([r.content_sha256 for r in rows], dtype=str),
            sketches=sketches, labels=np.array([r.label for r in rows], dtype=np.int64))

    def images(self, ids: list[int]) -> dict[int, np.ndarray]:
        """The stored images (where --log-images kept them) of the rows `ids`."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(queries.c.id, queries.c.image).where(queries.c.id.in_(ids))).all()
        return {r.id: np.load(io.BytesIO(r.image), allow_pickle=False) for r in rows if r.image is not None}

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_durable(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the answer leaves
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


__all__ = ["LOG_FORMAT", "LoggedQueries", "QueryLog", "SKETCH_SIDE", "Sketcher", "image_bytes", "queries"]
