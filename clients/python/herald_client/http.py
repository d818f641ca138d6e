"""Sending over HTTP, for services that do not want a Kafka client:
`herald api`'s `POST /v1/notifications` and its batch, with idempotency
keys, and the status and cancel endpoints. The standard library only."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

from .requests import Request


class Refused(Exception):
    """herald api said no, and sending the same again will not change that:
    a bad token (401), a missing scope (403), a request that cannot be sent
    (400, with one error per field in `fields`), or an idempotency key used
    with another body (422)."""

    def __init__(self, status: int, error: str, message: str, fields: Optional[List[Dict[str, str]]] = None):
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.message, self.fields = status, error, message, fields or []


class Unavailable(Exception):
    """Nothing certain was written: the broker or the store did not answer,
    or herald api could not be reached. Send again, with the same
    idempotency key, and nothing is written twice."""


@dataclass(frozen=True)
class Accepted:
    """On the requests topic: herald will send it, or say why not."""

    event_id: str
    status_url: str


@dataclass(frozen=True)
class BatchItem:
    index: int
    result: str  # "accepted", "invalid" or "unavailable"
    event_id: Optional[str] = None
    status_url: Optional[str] = None
    errors: List[Dict[str, str]] = field(default_factory=list)


class HttpSender:
    """`herald api` at `base_url` (else `HERALD_API_URL`, else
    http://localhost:8081), with a token that has the scopes it needs
    (else `HERALD_API_TOKEN`): `send` needs `send`, `status` needs `read`,
    `cancel` needs `cancel`."""

    def __init__(self, base_url: Optional[str] = None, token: Optional[str] = None, *, timeout: float = 30.0):
        self.base_url = (base_url or os.environ.get("HERALD_API_URL") or "http://localhost:8081").rstrip("/")
        token = token or os.environ.get("HERALD_API_TOKEN")
        if not token:
            raise ValueError("a token is required: pass token= or set HERALD_API_TOKEN")
        self._token = token
        self.timeout = timeout

    def send(self, request: Request, *, idempotency_key: Optional[str] = None) -> Accepted:
        """Writes one request; returns once the broker has it. With
        `idempotency_key`, sending again (after `Unavailable`, or a crash)
        returns the first answer and writes nothing."""
        answer = self._call("POST", "/v1/notifications", request.to_json(), idempotency_key)
        return Accepted(answer["event_id"], answer["status_url"])

    def send_batch(self, requests: Iterable[Request], *, idempotency_key: Optional[str] = None) -> List[BatchItem]:
        """Up to 1,000 requests in one call; one result each, in order."""
        body = {"notifications": [r.to_json() for r in requests]}
        answer = self._call("POST", "/v1/notifications/batch", body, idempotency_key)
        return [BatchItem(r["index"], r["result"], r.get("event_id"), r.get("status_url"), r.get("errors", [])) for r in answer["results"]]

    def status(self, event_id: str) -> Dict:
        """The notification's current status and history, as the store has them."""
        return self._call("GET", f"/v1/notifications/{urllib.parse.quote(event_id, safe='')}")

    def cancel(self, event_id: str, reason: Optional[str] = None) -> Dict:
        """Asks herald not to send `event_id`; `Refused` (409) when it is final already."""
        return self._call("POST", f"/v1/notifications/{urllib.parse.quote(event_id, safe='')}/cancel", {"reason": reason})

    def _call(self, method: str, path: str, body: Optional[Dict] = None, idempotency_key: Optional[str] = None) -> Dict:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                answer = json.loads(e.read() or b"{}")
            except ValueError:
                answer = {}
            if e.code == 503 or e.code == 429:
                raise Unavailable(f"{e.code} {answer.get('message', e.reason)}") from None
            raise Refused(e.code, answer.get("error", "unknown"), answer.get("message", str(e.reason)), answer.get("fields")) from None
        except (urllib.error.URLError, OSError) as e:
            raise Unavailable(f"herald api at {self.base_url} did not answer: {e}") from None
