"""The compose file and the Kubernetes manifests agree with the settings and with each other.

No Docker engine or cluster runs here, so these parse the files and cross-check
names, ports, environment keys, topics and partitions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from config.settings import ENV_KEYS, KAFKA_ENV_PREFIXES, Settings, load_settings
from worker.metrics import Metrics

ROOT = Path(__file__).parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
TOPIC_SPEC = re.compile(r"([\w.]+):(\d+)")
COMPACTED_CREATE = re.compile(
    r"kafka-topics\.sh [^\n]*--create [^\n]*--topic \"?([\w.-]+)\"? [^\n]*"
    r"--config cleanup\.policy=compact\b"
)
GRAFANA = ROOT / "deploy" / "grafana" / "zsc-worker.json"
README = ROOT / "README.md"
METRIC_NAME = re.compile(r"\bzsc_\w+")
# The series a metric family of each type exposes, after the family's name.
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
}
# How the README's table names a family: by the series people query.
TABLE_SUFFIX = {"counter": "_total", "gauge": "", "histogram": "", "info": "_info"}
TABLE_ROW = re.compile(r"^\| `(zsc_\w+)` \| (\w+) \|([^|]*)\|", re.MULTILINE)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in load_all(path):
            found[(path.name, doc["kind"])] = doc
    return found


def known_env(name: str) -> bool:
    return name in ENV_KEYS or any(name.startswith(prefix) for prefix in KAFKA_ENV_PREFIXES)


def created_partitions(script: str) -> dict[str, int]:
    """The topics a creation script makes, with their partition counts."""
    loop = re.search(r"for t in ([^;]+);", script)
    assert loop, "the script creates its topics in a `for t in name:partitions ...` loop"
    return {name: int(count) for name, count in TOPIC_SPEC.findall(loop.group(1))}


def compacted_topics(script: str) -> set[str]:
    """The topics a creation script makes compacted, each in a command of its own."""
    return set(COMPACTED_CREATE.findall(script.replace("\\\n", " ")))


def assert_control_topic_compacted(script: str, control_topic: str) -> None:
    assert control_topic, "the workers are configured with a control topic"
    assert control_topic in compacted_topics(script), f"{control_topic} is created compacted"
    # Created first by the loop (`--if-not-exists`), it would stay uncompacted.
    assert control_topic not in created_partitions(script)


def all_topics(settings: Settings) -> set[str]:
    return {name for t in settings.topics for name in (t.input, t.output, t.dead_letter)}


# --- docker-compose.yml ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_apache_kafka_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1


def test_compose_worker_scales_and_its_settings_are_real(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["deploy"]["replicas"] >= 1
    assert "container_name" not in worker, "a fixed name would stop --scale"
    env = worker["environment"]
    assert all(known_env(name) for name in env), sorted(n for n in env if not known_env(n))
    assert str(env["ZSC_METRICS_PORT"]) in [str(p) for p in worker["expose"]]
    listener = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{env['ZSC_BOOTSTRAP_SERVERS']}" in listener
    mounted = {v.split(":")[0]: v.split(":")[1] for v in worker["volumes"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'"--config", "{mounted["./config/example.yaml"]}"' in dockerfile
    grace = float(worker["stop_grace_period"].rstrip("s"))
    settings = load_settings(ROOT / "config" / "example.yaml", environ={})
    assert grace > settings.shutdown_timeout_s, "compose must wait for the graceful shutdown"


def test_compose_creates_every_topic_of_the_example_config(compose: dict[str, Any]) -> None:
    script = compose["services"]["topics"]["command"][0]
    partitions = created_partitions(script)
    settings = load_settings(ROOT / "config" / "example.yaml", environ={})
    assert all_topics(settings) <= set(partitions), all_topics(settings) - set(partitions)
    for topic in settings.topics:
        assert partitions[topic.input] > 1, "input topics have partitions for workers to share"


def test_compose_creates_the_control_topic_compacted_and_the_worker_reads_it(
    compose: dict[str, Any],
) -> None:
    script = compose["services"]["topics"]["command"][0]
    control_topic = compose["services"]["worker"]["environment"]["ZSC_CONTROL_TOPIC"]
    assert_control_topic_compacted(script, control_topic)


def test_compose_profiles_for_monitoring_and_sample_events(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    [job] = scrape["scrape_configs"]
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == int(
        services["worker"]["environment"]["ZSC_METRICS_PORT"]
    )
    producer = services["producer"]
    assert producer["profiles"] == ["producer"]
    assert producer["command"][0] == "produce"
    sample = producer["command"][1].replace("/samples/", "")
    assert (ROOT / "deploy" / "samples" / sample).is_file()


# --- deploy/kubernetes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def configured(k8s: dict[tuple[str, str], dict[str, Any]], tmp_path_factory) -> Settings:
    config = k8s[("configmap.yaml", "ConfigMap")]["data"]["config.yaml"]
    path = tmp_path_factory.mktemp("k8s") / "config.yaml"
    path.write_text(config)
    return load_settings(path, environ={})


@pytest.mark.parametrize("variant", ["deployment.yaml", "deployment-gpu.yaml"])
def test_deployment_probes_port_grace_and_static_membership(
    k8s: dict[tuple[str, str], dict[str, Any]], configured: Settings, variant: str
) -> None:
    deployment = k8s[(variant, "Deployment")]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == configured.metrics_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] > configured.shutdown_timeout_s
    env = {e["name"]: e for e in container["env"]}
    assert all(known_env(name) for name in env), sorted(n for n in env if not known_env(n))
    instance = env["ZSC_KAFKA_CONSUMER_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]
    assert instance["fieldPath"] == "metadata.name"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["args"][-1] == f"{mounts['config']}/config.yaml"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        volumes["config"]["configMap"]["name"]
        == k8s[("configmap.yaml", "ConfigMap")]["metadata"]["name"]
    )
    assert container["resources"]["limits"]["memory"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_the_gpu_variant_asks_for_a_gpu_and_larger_batches(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    [container] = k8s[("deployment-gpu.yaml", "Deployment")]["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ZSC_DEVICE"] == "cuda"
    assert int(env["ZSC_MAX_BATCH_TOKENS"]) > 8192


def test_keda_scales_the_deployment_on_the_groups_lag_within_the_partitions(
    k8s: dict[tuple[str, str], dict[str, Any]], configured: Settings
) -> None:
    scaled = k8s[("scaledobject.yaml", "ScaledObject")]
    assert scaled["apiVersion"].startswith("keda.sh/")
    assert (
        scaled["spec"]["scaleTargetRef"]["name"]
        == k8s[("deployment.yaml", "Deployment")]["metadata"]["name"]
    )
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    inputs = {t.input for t in configured.topics}
    assert {t["metadata"]["topic"] for t in triggers} == inputs
    for trigger in triggers:
        assert trigger["metadata"]["consumerGroup"] == configured.kafka.group_id
        assert trigger["metadata"]["bootstrapServers"] == configured.kafka.bootstrap_servers
        assert int(trigger["metadata"]["lagThreshold"]) > 0
    job = k8s[("topics-job.yaml", "Job")]
    [container] = job["spec"]["template"]["spec"]["containers"]
    partitions = created_partitions(container["args"][0])
    assert all_topics(configured) <= set(partitions)
    assert scaled["spec"]["maxReplicaCount"] <= min(partitions[name] for name in inputs)


def test_the_topics_job_creates_the_control_topic_compacted(
    k8s: dict[tuple[str, str], dict[str, Any]], configured: Settings
) -> None:
    [container] = k8s[("topics-job.yaml", "Job")]["spec"]["template"]["spec"]["containers"]
    assert_control_topic_compacted(container["args"][0], configured.control_topic)


def test_kustomization_lists_the_manifests(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    listed = set(k8s[("kustomization.yaml", "Kustomization")]["resources"])
    assert listed == {name for name, _ in k8s} - {"kustomization.yaml", "deployment-gpu.yaml"}


# --- deploy/grafana and the README's metric table -----------------------------------------


def exported_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Each metric the worker exports, named as queried, with its type and label names.

    Label names of the info metric come from the classifier at run time, so none here.
    """
    found = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            [family] = metric.describe()
            # prometheus_client keeps a metric's label names only in this attribute.
            labels = frozenset(metric._labelnames)
            found[family.name + TABLE_SUFFIX[family.type]] = (family.type, labels)
    return found


def exported_series() -> set[str]:
    """Every series name the worker's /metrics can show."""
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in SERIES_SUFFIXES[family.type]
    }


def dashboard_queries(node: Any) -> list[str]:
    """The PromQL of a Grafana dashboard: panel targets and template variable queries."""
    if isinstance(node, list):
        return [query for item in node for query in dashboard_queries(item)]
    if not isinstance(node, dict):
        return []
    queries = [value for key, value in node.items() if key == "expr" and isinstance(value, str)]
    if isinstance(node.get("query"), str) and node.get("type") == "query":
        queries.append(node["query"])
    if isinstance(node.get("definition"), str):
        queries.append(node["definition"])
    for value in node.values():
        queries += dashboard_queries(value)
    return queries


def readme_metric_table() -> dict[str, tuple[str, str]]:
    """The README's metric table: each metric with its type and labels column."""
    text = README.read_text(encoding="utf-8")
    operations = text.split("\n## Operations\n", 1)[1].split("\n## ", 1)[0]
    return {name: (kind, labels) for name, kind, labels in TABLE_ROW.findall(operations)}


def test_the_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(GRAFANA.read_text(encoding="utf-8"))
    queries = dashboard_queries(dashboard)
    used = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert used, "the dashboard queries the worker's metrics"
    unknown = used - exported_series()
    assert not unknown, f"the dashboard queries metrics the worker does not export: {unknown}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    # Every panel's data source is the dashboard's variable, so an import picks it once.
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"].strip("${}") in variables
            assert panel["targets"], panel["title"]


def test_the_readme_metric_table_lists_every_exported_metric() -> None:
    table = readme_metric_table()
    exported = exported_metrics()
    assert set(table) == set(exported), (
        f"missing from the README: {sorted(set(exported) - set(table))}; "
        f"not exported: {sorted(set(table) - set(exported))}"
    )
    for name, (kind, labels) in exported.items():
        listed_kind, listed_labels = table[name]
        assert listed_kind == kind, name
        if kind != "info":
            assert set(re.findall(r"`(\w+)`", listed_labels)) == labels, name
