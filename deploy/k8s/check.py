"""Checks deploy/k8s: every resource against the Kubernetes API schemas
(kubernetes-validate, strict), and what no schema knows: that the
kustomization lists what is here, selectors match their pods, probes name
ports that exist, every environment name is one herald reads, KEDA's cap is
the partition count, memory requests cover the RSS measured in the load
benchmark, and that each Deployment starts as shipped: `herald check` runs
with the environment and the mounted files its pods would have.

    python3 deploy/k8s/check.py [HERALD_BIN]
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
# Peak RSS in `cargo bench --bench load` (README, Benchmarks), in MiB.
MEASURED_RSS = {"herald": 141, "herald-api": 152}
failures = []


def fail(message):
    failures.append(message)


def mib(quantity):
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity) / 2**20


kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
listed = set(kustomization["resources"])
present = {p.name for p in HERE.glob("*.yaml")} - {"kustomization.yaml"}
if listed != present:
    fail(f"kustomization lists {sorted(listed)}, the directory has {sorted(present)}")

docs = []
for name in kustomization["resources"]:
    for doc in yaml.safe_load_all((HERE / name).read_text()):
        docs.append((name, doc))
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # no schema here for KEDA's CRD: checked by hand below
        try:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
        except kubernetes_validate.ValidationError as error:
            fail(f"{name} {doc['kind']} {doc['metadata']['name']}: {error.message} at {list(error.path)}")

by_kind = {}
for name, doc in docs:
    by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc

config = by_kind["ConfigMap"]["herald-config"]["data"]
secret_keys = {k for s in by_kind["Secret"].values() for k in s.get("stringData", {})}

herald = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("HERALD_BIN", "target/release/herald")
help_text = subprocess.run([herald, "--help"], capture_output=True, text=True, check=True).stdout
help_text += subprocess.run([herald, "api", "--help"], capture_output=True, text=True, check=True).stdout
for key in list(config) + [k for k in secret_keys if k != "key.json"]:
    if key != "RUST_LOG" and f"[env: {key}]" not in help_text and f"[env: {key}=" not in help_text:
        fail(f"{key} is not an environment name herald reads (herald --help)")

for name, deployment in by_kind["Deployment"].items():
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in spec["selector"]["matchLabels"].items()):
        fail(f"Deployment {name}: its selector does not match its pods' labels")
    for container in spec["template"]["spec"]["containers"]:
        ports = {p["name"] for p in container.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in container:
                port = (container[probe].get("httpGet") or container[probe].get("tcpSocket"))["port"]
                if port not in ports:
                    fail(f"{name} {probe} names port {port!r}, which the container does not have")
        requested = mib(container["resources"]["requests"]["memory"])
        limit = mib(container["resources"]["limits"]["memory"])
        if requested < MEASURED_RSS[name] or limit < requested:
            fail(f"{name}: memory request {requested} MiB is under the measured {MEASURED_RSS[name]} MiB, or over its limit")
        grace = spec["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        deadline = int(config["HERALD_SHUTDOWN_DEADLINE"].rstrip("s"))
        if grace <= deadline:
            fail(f"{name}: terminationGracePeriodSeconds {grace} must exceed the shutdown deadline {deadline}s")

secrets = {name: doc.get("stringData") or {} for name, doc in by_kind["Secret"].items()}


def started_as_shipped(name, pod):
    """`herald check` with the environment and files of `pod`'s container,
    as Kubernetes would give them; mounted secrets are written to a
    directory of their own, and paths into them follow."""
    container = pod["containers"][0]
    with tempfile.TemporaryDirectory() as root:
        mounts = {}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            secret = volumes[mount["name"]]["secret"]
            local = Path(root) / mount["name"]
            local.mkdir()
            for file, text in secrets.get(secret["secretName"], {}).items():
                (local / file).write_text(text)
            mounts[mount["mountPath"]] = str(local)
        env = {"PATH": os.environ.get("PATH", "")}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(by_kind["ConfigMap"][source["configMapRef"]["name"]]["data"])
            if "secretRef" in source:
                env.update(secrets[source["secretRef"]["name"]])
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            else:
                ref = entry["valueFrom"]["secretKeyRef"]
                env[entry["name"]] = secrets[ref["name"]][ref["key"]]
        for key, value in env.items():
            for path, local in mounts.items():
                if value.startswith(path):
                    env[key] = local + value[len(path):]
        args = container.get("args", [])
        run = subprocess.run([herald, "check", *args], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            fail(f"{name} does not start as shipped: herald check {' '.join(args)}: {run.stderr.strip()}")
        else:
            print(f"{name}: {run.stdout.strip()}")


for name, deployment in by_kind["Deployment"].items():
    started_as_shipped(name, deployment["spec"]["template"]["spec"])
fcm = config.get("GOOGLE_APPLICATION_CREDENTIALS", "")
herald_mounts = [m["mountPath"] for m in by_kind["Deployment"]["herald"]["spec"]["template"]["spec"]["containers"][0].get("volumeMounts", [])]
if fcm and not any(fcm.startswith(path) for path in herald_mounts):
    fail(f"GOOGLE_APPLICATION_CREDENTIALS {fcm} is in no mounted volume")

admin = config["HERALD_ADMIN_LISTEN"].rsplit(":", 1)[1]
herald_ports = {p["containerPort"] for p in by_kind["Deployment"]["herald"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
if int(admin) not in herald_ports:
    fail(f"HERALD_ADMIN_LISTEN's port {admin} is not the container's admin port")

for name, pdb in by_kind["PodDisruptionBudget"].items():
    targets = [d for d, dep in by_kind["Deployment"].items() if all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())]
    if targets != ["herald"]:
        fail(f"PodDisruptionBudget {name} selects {targets}")

scaled = by_kind["ScaledObject"]["herald"]["spec"]
trigger = scaled["triggers"][0]
checks = [
    (scaled["scaleTargetRef"]["name"] in by_kind["Deployment"], "scaleTargetRef names no Deployment"),
    (trigger["type"] == "kafka", "the trigger is not KEDA's Kafka scaler"),
    (trigger["metadata"]["consumerGroup"] == config["HERALD_GROUP_ID"], "the trigger's consumerGroup is not HERALD_GROUP_ID"),
    (trigger["metadata"]["bootstrapServers"] == config["KAFKA_BROKERS"], "the trigger's bootstrapServers are not KAFKA_BROKERS"),
    (scaled["maxReplicaCount"] == int(config["HERALD_TOPIC_PARTITIONS"]), "maxReplicaCount is not the partition count"),
    (1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"], "minReplicaCount is out of range"),
    (trigger["metadata"].get("allowIdleConsumers") == "false", "idle consumers beyond the partitions are allowed"),
    (int(trigger["metadata"]["lagThreshold"]) > 0, "lagThreshold is not positive"),
]
for ok, message in checks:
    if not ok:
        fail(f"ScaledObject herald: {message}")

job = by_kind["Job"]["herald-migrate"]["spec"]["template"]["spec"]
if job["containers"][0]["args"] != ["migrate"] or job["restartPolicy"] == "Always":
    fail("the migrate Job does not run herald migrate once")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"deploy/k8s: {len(docs)} resources valid")
