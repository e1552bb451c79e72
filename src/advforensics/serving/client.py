"""A buyer's view of a served copy: a module whose forward asks the endpoint over HTTP.

`RemoteCopy(url, key)` returns one-hot rows of the labels the endpoint answers, so any attack of the
registry runs against it and sees labels only (what a hard-label attack may use). It splits large
batches into the endpoint's max_batch, waits out its rate limit (Retry-After) and counts every image it sent (`queries`).
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import orjson
import torch
from torch import nn


class EndpointError(RuntimeError):
    """The endpoint refused a request: its status and its one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class RemoteCopy(nn.Module):
    def __init__(self, url: str, key: str, num_classes: int = 10, timeout: float = 60.0, max_waits: int = 30) -> None:
        super().__init__()
        self.url, self.num_classes, self.max_waits = url.rstrip("/"), num_classes, max_waits
        self.http = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
        info = self._checked(self.http.get(f"{self.url}/v1/info"))
        self.max_batch = int(info["max_batch"])
        self.queries = 0

    @staticmethod
    def _checked(response: httpx.Response) -> dict:
        if response.status_code != 200:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError):
                message = response.text[:200]
            raise EndpointError(response.status_code, message)
        return response.json()

    def _post(self, body: bytes) -> httpx.Response:
        """POST a batch; over the rate limit, wait as the endpoint says (at most `max_waits` times)."""
        for _ in range(self.max_waits):
            response = self.http.post(f"{self.url}/v1/labels", content=body, headers={"Content-Type": "application/json"})
            if response.status_code != 429:
                return response
            time.sleep(float(response.headers.get("Retry-After", "1")))
        return response

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """The endpoint's labels (B,) for images (B, C, H, W) in [0, 1]."""
        images = x.detach().to(torch.float32).cpu().numpy()
        out = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start:start + self.max_batch]
            body = orjson.dumps({"images": chunk}, option=orjson.OPT_SERIALIZE_NUMPY)
            answer = self._checked(self._post(body))
            out.append(np.asarray(answer["labels"], dtype=np.int64))
            self.queries += len(chunk)
        return torch.from_numpy(np.concatenate(out)) if out else torch.zeros(0, dtype=torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(self.labels(x), self.num_classes).to(torch.float32)

    def close(self) -> None:
        self.http.close()


__all__ = ["EndpointError", "RemoteCopy"]
