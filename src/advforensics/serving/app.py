"""The seller's endpoint: each buyer's key opens their copy, which answers with labels only.

An ASGI app (Starlette) served by uvicorn. POST /v1/labels with `Authorization: Bearer <key>` and a
JSON body {"images": [...]} of shape (B, C, H, W) or (C, H, W), values in [0, 1]; the answer is
{"labels": [...]} and nothing else (no score, no copy index). Every image is logged (querylog.py)
before the answer is sent: the server's log writer commits the rows of every waiting request in one
transaction (a group commit), so durability costs one disk sync per batch of requests, not per
request. Keys are re-read when the keys file changes, so a revocation takes effect at once.
Per-key rate limits count images (a batch of 100 costs 100), with `limits`' moving window.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from advforensics.errors import CheckpointError, InputValidationError
from advforensics.serving.keys import Buyer, BuyerKeys, read_keys
from advforensics.serving.querylog import QueryLog, Sketcher, image_bytes
from advforensics.tracing.record import SellerRecord, read_record
from advforensics.utils import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Limits of the endpoint. rate_limit: images per key, in `limits`' notation ("1000/second")."""

    max_batch: int = 256
    rate_limit: str = "2000/second"
    log_images: bool = False  # also store every image in the log (float32 .npy), not only its sketch

    def checked(self) -> ServeConfig:
        if self.max_batch < 1:
            raise InputValidationError(f"--max-batch {self.max_batch}: must be at least 1")
        try:
            parse(self.rate_limit)
        except ValueError:
            raise InputValidationError(f"--rate-limit {self.rate_limit!r}: use e.g. '1000/second' or "
                                       "'50000/hour'") from None
        return self


class ClientError(Exception):
    """A request the endpoint refuses: an HTTP status and one line saying why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def open_copies(record_dir: Path, record: SellerRecord, indices: set[int]) -> dict[int, Any]:
    """ONNX Runtime sessions of the copies `indices`, each file checked against the record first."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one request at a time per process; threads only contend
    options.inter_op_num_threads = 1
    sessions = {}
    for index in sorted(indices):
        entry = record.copies[index]
        path = record_dir / entry.onnx_file
        if not path.is_file():
            raise InputValidationError(f"{path} is missing: the record names it for copy {index}")
        if sha256_file(path) != entry.onnx_sha256:
            raise CheckpointError(f"{entry.onnx_file} does not match the record (modified or replaced)")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if [o.name for o in session.get_outputs()] != ["label"]:
            raise CheckpointError(f"{entry.onnx_file} answers more than a label; export the copies again "
                                  "(`trace separate`) before serving them")
        sessions[index] = session
    return sessions


class KeysFile:
    """The keys file, re-read when it changes on disk (revocations apply without a restart)."""

    def __init__(self, path: Path, record: SellerRecord) -> None:
        self.path, self.record = path, record
        self._stamp: tuple[int, int] | None = None
        self.keys = self._load()

    def _load(self) -> BuyerKeys:
        stat = self.path.stat()
        keys = read_keys(self.path)
        keys.check_against(self.record)
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return keys

    def current(self) -> BuyerKeys:
        try:
            stat = self.path.stat()
            if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                self.keys = self._load()
        except (OSError, CheckpointError, InputValidationError) as error:  # keep serving the last good keys
            log.error("keys file %s unreadable (%s); keeping the keys read before", self.path, error)
        return self.keys


class LogWriter:
    """Commits queued rows in batches; each request waits for the commit holding its rows."""

    def __init__(self, query_log: QueryLog) -> None:
        self.query_log = query_log
        self.queue: asyncio.Queue[tuple[list[dict[str, Any]], asyncio.Future[None]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            rows = [row for rows, _ in batch for row in rows]
            try:
                await asyncio.to_thread(self.query_log.append, rows)
            except Exception as error:  # noqa: BLE001 - every waiting request learns of it
                log.error("query log write failed: %s", error)
                for _, done in batch:
                    done.set_exception(error)
            else:
                for _, done in batch:
                    done.set_result(None)

    async def write(self, rows: list[dict[str, Any]]) -> None:
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((rows, done))
        await done


class Endpoint:
    """The state behind the routes: the record, the keys, the copies, the limiter and the log."""

    def __init__(self, record_dir: str | Path, keys_path: str | Path, query_log: QueryLog | str,
                 config: ServeConfig = ServeConfig(), public_key: str | Path | None = None) -> None:
        self.record_dir = Path(record_dir)
        self.record = read_record(self.record_dir, public_key=public_key)
        if not Path(keys_path).is_file():
            raise InputValidationError(f"no keys file at {keys_path}; make one with `advforensics buyers add`")
        self.keys = KeysFile(Path(keys_path), self.record)
        servable = {i for i, c in enumerate(self.record.copies) if c.onnx_file is not None}
        if not servable:
            raise InputValidationError(f"{self.record_dir}'s copies have no ONNX files (made with --no-onnx)")
        self.sessions = open_copies(self.record_dir, self.record, servable)
        self.config = config.checked()
        self.shape = tuple(self.record.input_shape)
        self.sketch = Sketcher(self.shape[1], self.shape[2])
        self.limit: RateLimitItem = parse(self.config.rate_limit)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        # a log target is opened (and a new SQLite file made) only once the record and keys have passed
        query_log = QueryLog(query_log) if isinstance(query_log, str) else query_log
        query_log.claim_shape(self.shape)
        self.query_log = query_log
        self.writer = LogWriter(query_log)

    # -- request handling ------------------------------------------------------------------------

    def buyer(self, request: Request) -> Buyer:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        buyer = self.keys.current().authenticate(key) if key else None
        if buyer is None:
            raise ClientError(401, "unknown or revoked API key (send Authorization: Bearer <key>)",
                              {"WWW-Authenticate": "Bearer"})
        return buyer

    def images(self, body: bytes) -> np.ndarray:
        limit = self.max_body_bytes
        if len(body) > limit:
            raise ClientError(413, f"request body over {limit} bytes; send at most {self.config.max_batch} images")
        try:
            payload = orjson.loads(body)
            images = np.asarray(payload["images"], dtype=np.float32)
        except orjson.JSONDecodeError:
            raise ClientError(400, 'the body is not JSON; send {"images": [...]}') from None
        except (KeyError, TypeError):
            raise ClientError(400, 'send a JSON object {"images": [...]} of shape (B, C, H, W)') from None
        except ValueError:
            raise ClientError(400, "images must be a rectangular array of numbers") from None
        if images.size == 0:
            raise ClientError(422, f"no image: send 1 to {self.config.max_batch} per request")
        if images.ndim == len(self.shape):
            images = images[None]
        if images.ndim != len(self.shape) + 1 or tuple(images.shape[1:]) != self.shape:
            raise ClientError(422, f"images of shape {list(images.shape)}: this copy takes (B, {', '.join(map(str, self.shape))})"
                              " in NCHW order")
        if len(images) > self.config.max_batch:
            raise ClientError(413, f"{len(images)} images: send 1 to {self.config.max_batch} per request")
        if not np.isfinite(images).all():
            raise ClientError(422, "images hold NaN or infinity")
        if images.min() < 0.0 or images.max() > 1.0:
            raise ClientError(422, "image values must lie in [0, 1] (scale 8-bit pixels by 1/255)")
        return images

    @property
    def max_body_bytes(self) -> int:
        # JSON of floats: ~25 bytes a value at most, plus brackets
        return int(self.config.max_batch * int(np.prod(self.shape)) * 25 + 1024)

    async def labels(self, request: Request) -> Response:
        buyer = self.buyer(request)
        images = self.images(await request.body())
        if not self.limiter.hit(self.limit, buyer.name, cost=len(images)):
            reset = self.limiter.get_window_stats(self.limit, buyer.name).reset_time
            raise ClientError(429, f"rate limit {self.config.rate_limit} (images) reached for this key",
                              {"Retry-After": str(max(1, int(np.ceil(reset - time.time()))))})
        labels = self.sessions[buyer.copy_index].run(["label"], {"x": images})[0].astype(np.int64)
        request_id = uuid.uuid4().hex
        now = time.time()
        sketches = self.sketch(images)
        rows = [{"buyer": buyer.name, "copy_index": buyer.copy_index, "received_at": now, "request_id": request_id,
                 "position": i, "content_sha256": hashlib.sha256(images[i].tobytes()).hexdigest(),
                 "sketch": sketches[i].tobytes(), "label": int(labels[i]),
                 "image": image_bytes(images[i]) if self.config.log_images else None}
                for i in range(len(images))]
        try:
            await self.writer.write(rows)
        except Exception:  # noqa: BLE001 - never answer a query that is not logged
            raise ClientError(503, "the query log is unavailable; try again later") from None
        return Response(orjson.dumps({"labels": labels.tolist()}), media_type="application/json",
                        headers={"X-Request-Id": request_id})

    async def info(self, request: Request) -> Response:
        self.buyer(request)
        return JSONResponse({"input_shape": list(self.shape), "layout": "NCHW", "range": [0.0, 1.0],
                             "max_batch": self.config.max_batch, "rate_limit": self.config.rate_limit})


def create_app(endpoint: Endpoint) -> Starlette:
    """The ASGI app of `endpoint`; its lifespan runs the log writer."""

    def guarded(handler):
        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ClientError as error:
                return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)
        return route

    async def health(_request: Request) -> Response:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):
        endpoint.writer.task = asyncio.create_task(endpoint.writer.run())
        try:
            yield
        finally:
            endpoint.writer.task.cancel()

    return Starlette(routes=[Route("/v1/labels", guarded(endpoint.labels), methods=["POST"]),
                             Route("/v1/info", guarded(endpoint.info), methods=["GET"]),
                             Route("/healthz", health, methods=["GET"])], lifespan=lifespan)


def serve(endpoint: Endpoint, host: str = "127.0.0.1", port: int = 8000, announce=print) -> None:
    """Run `endpoint` under uvicorn until interrupted; `announce` gets the URL once the socket listens."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        raise InputValidationError(f"cannot listen on {host}:{port} ({error.strerror})") from None
    sock.listen(2048)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(create_app(endpoint), log_level="warning", access_log=False,
                            http="httptools" if _has("httptools") else "h11",
                            loop="uvloop" if _has("uvloop") else "asyncio", timeout_graceful_shutdown=5)
    announce(f"http://{host}:{bound}")
    uvicorn.Server(config).run(sockets=[sock])


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


__all__ = ["ClientError", "Endpoint", "ServeConfig", "create_app", "open_copies", "serve"]
