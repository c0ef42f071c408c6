"""Checks deploy/kubernetes/*.yaml and the Dockerfile against what
rollout-host needs (run by ./test.sh; no cluster or Docker engine needed).

- every document has apiVersion, kind and metadata.name;
- the Deployment's readiness and liveness probes ask /health on the
  container's port; the Service, HPA and PodDisruptionBudget select or
  target its pods; the pod waits long enough at termination for preStop +
  --shutdown-grace; each replica is named after its pod; --redis names the
  Redis Service; requests and a memory limit are set; it runs as non-root;
- the Redis Deployment keeps an append-only file on a persistent volume;
- the Dockerfile is multi-stage, runs as a non-root user, and its user,
  port and cache directory match the manifests.
"""

import pathlib
import re
import sys
import unittest

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def documents():
    docs = []
    for path in sorted((HERE / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append(doc)
    return docs


def find(docs, kind, name):
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def flag(args, name):
    for arg in args:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


class Manifests(unittest.TestCase):
    def setUp(self):
        self.docs = documents()
        self.host = find(self.docs, "Deployment", "rollout-host")
        self.pod = self.host["spec"]["template"]["spec"]
        self.container = self.pod["containers"][0]
        self.labels = self.host["spec"]["template"]["metadata"]["labels"]

    def test_every_document_is_named(self):
        for doc in self.docs:
            for field in ("apiVersion", "kind"):
                self.assertIn(field, doc)
            self.assertTrue(doc["metadata"]["name"])

    def test_probes_ask_health_on_the_served_port(self):
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.assertEqual(ports["http"], 9000)
        for probe in ("readinessProbe", "livenessProbe"):
            get = self.container[probe]["httpGet"]
            self.assertEqual(get["path"], "/health")
            self.assertIn(get["port"], ports)

    def test_service_hpa_and_budget_reach_the_pods(self):
        service = find(self.docs, "Service", "rollout-host")
        self.assertEqual(service["spec"]["selector"], self.labels)
        self.assertEqual(service["spec"]["ports"][0]["targetPort"], "http")
        hpa = find(self.docs, "HorizontalPodAutoscaler", "rollout-host")
        target = hpa["spec"]["scaleTargetRef"]
        self.assertEqual((target["kind"], target["name"]), ("Deployment", "rollout-host"))
        self.assertEqual(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu")
        budget = find(self.docs, "PodDisruptionBudget", "rollout-host")
        self.assertEqual(budget["spec"]["selector"]["matchLabels"], self.labels)

    def test_termination_waits_for_pre_stop_and_the_shutdown_grace(self):
        grace = float(flag(self.container["args"], "shutdown-grace"))
        pre_stop = float(self.container["lifecycle"]["preStop"]["exec"]["command"][1])
        self.assertGreaterEqual(
            self.pod["terminationGracePeriodSeconds"], pre_stop + grace + 5
        )

    def test_replicas_share_redis_and_are_named_after_their_pod(self):
        redis = flag(self.container["args"], "redis")
        match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)", redis or "")
        self.assertTrue(match, redis)
        service = find(self.docs, "Service", match.group(1))
        self.assertEqual(service["spec"]["ports"][0]["port"], int(match.group(2)))
        env = {e["name"]: e for e in self.container["env"]}
        self.assertEqual(
            env["ROLLOUT_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name",
        )

    def test_resources_and_user(self):
        resources = self.container["resources"]
        self.assertIn("cpu", resources["requests"])
        self.assertIn("memory", resources["requests"])
        self.assertIn("memory", resources["limits"])
        self.assertTrue(self.pod["securityContext"]["runAsNonRoot"])

    def test_the_plugin_comes_from_a_volume_and_reloads(self):
        plugin = flag(self.container["args"], "plugin")
        mounts = {m["mountPath"]: m["name"] for m in self.container["volumeMounts"]}
        directory = str(pathlib.PurePosixPath(plugin).parent)
        self.assertIn(directory, mounts)
        volumes = {v["name"]: v for v in self.pod["volumes"]}
        self.assertIn("configMap", volumes[mounts[directory]])
        self.assertIn("--reload", self.container["args"])

    def test_redis_keeps_an_append_only_file_on_a_volume(self):
        redis = find(self.docs, "Deployment", "rollout-host-redis")
        container = redis["spec"]["template"]["spec"]["containers"][0]
        args = container["args"]
        self.assertEqual(args[args.index("--appendonly") + 1], "yes")
        volume = redis["spec"]["template"]["spec"]["volumes"][0]
        find(self.docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


class Dockerfile(unittest.TestCase):
    def setUp(self):
        self.text = (ROOT / "Dockerfile").read_text()
        self.pod = find(documents(), "Deployment", "rollout-host")["spec"]["template"]["spec"]

    def test_multi_stage_non_root_and_matching_the_manifests(self):
        stages = re.findall(r"^FROM ", self.text, re.M)
        self.assertGreaterEqual(len(stages), 2)
        user = re.findall(r"^USER (\S+)", self.text, re.M)
        self.assertEqual(user[-1], str(self.pod["securityContext"]["runAsUser"]))
        self.assertNotEqual(user[-1], "0")
        self.assertIn("EXPOSE 9000", self.text)
        cache = re.search(r"^ENV ROLLOUT_CACHE_DIR=(\S+)", self.text, re.M).group(1)
        mounts = [m["mountPath"] for m in self.pod["containers"][0]["volumeMounts"]]
        self.assertTrue(any(cache.startswith(m + "/") for m in mounts), (cache, mounts))

    def test_it_copies_what_it_builds(self):
        for built in re.findall(r"^COPY --from=build (\S+)", self.text, re.M):
            self.assertTrue(
                built.startswith("/src/target/release/")
                or built.startswith("/src/plugins/target/wasm32-wasip2/release/"),
                built,
            )


if __name__ == "__main__":
    sys.exit(unittest.main())
