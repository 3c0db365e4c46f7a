"""deploy/compose.yaml, the Dockerfile, the topic script and the Kubernetes base, checked
statically (no container engine runs here): they parse, every file they reference exists,
every setting they pass is one the settings model reads, and the topics match the code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose
from packaging.requirements import Requirement

from pipeline.config import Settings
from pipeline.ingest.server import check_exposure, unauthenticated_endpoints
from pipeline.runtime import departments
from pipeline.topics import TOPICS

if TYPE_CHECKING:
    from tests.plugins.deploy import DeployKit

KUBECTL = shutil.which("kubectl")
K8S_VERSION = "1.31"
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s" / "base"
CARE_SERVICES = ("ingest", "worker-1", "worker-2")


def compose(kit: DeployKit) -> dict[str, Any]:
    doc: dict[str, Any] = kit.load_yaml(COMPOSE)
    return doc


def unknown_settings(kit: DeployKit, env: dict[str, Any] | list[str]) -> list[str]:
    """Names of PIPELINE_/KAFKA_ variables the settings model does not read."""
    names = [e.split("=", 1)[0] for e in env] if isinstance(env, list) else list(env)
    known = kit.settings_env_names()
    return [n for n in names if n.startswith(("PIPELINE_", "KAFKA_")) and n not in known]


def test_settings_env_names_are_what_pydantic_reads(
    deploy_kit: DeployKit, monkeypatch: Any
) -> None:
    names = deploy_kit.settings_env_names()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "PIPELINE_TOPIC_PREFIX", "PIPELINE_WEB_PORT"} <= names
    assert "PIPELINE_KAFKA_BOOTSTRAP_SERVERS" not in names
    monkeypatch.setenv("PIPELINE_SMTP_RELAY_PORT", "1025")
    assert Settings().smtp_relay_port == 1025
    assert unknown_settings(deploy_kit, {"PIPELINE_NO_SUCH_THING": "1"}) == [
        "PIPELINE_NO_SUCH_THING"
    ]


# ---------------------------------------------------------------- compose


def test_compose_runs_kraft_kafka_the_router_monitoring_and_a_mail_catcher(
    deploy_kit: DeployKit,
) -> None:
    services = compose(deploy_kit)["services"]
    assert {"kafka", "topic-init", *CARE_SERVICES, "prometheus", "grafana", "mailpit"} <= set(
        services
    )
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert not any("zookeeper" in str(s.get("image", "")) for s in services.values())
    for name, svc in services.items():
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image"


def test_compose_file_passes_the_compose_specification_parser() -> None:
    # compose_spec (Rust, the Compose Specification) on the document as docker compose reads
    # it: YAML merge keys resolved by the YAML loader first.
    document = json.dumps(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))
    parsed = PyCompose.from_json(document)
    assert set(parsed.service_names()) >= {"kafka", "ingest", "worker-1", "worker-2"}
    broken = document.replace('"service_completed_successfully"', '"service_finished"')
    with pytest.raises(ValueError, match="service_finished"):
        PyCompose.from_json(broken)


def test_compose_router_services_are_built_from_the_project_dockerfile(
    deploy_kit: DeployKit,
) -> None:
    services = compose(deploy_kit)["services"]
    for name in CARE_SERVICES:
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build["dockerfile"]).is_file()
        assert services[name]["depends_on"]["topic-init"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["ingest"]["command"] == ["ingest"]
    assert services["worker-1"]["command"] == services["worker-2"]["command"] == ["worker"]


def test_compose_passes_only_settings_the_code_reads(deploy_kit: DeployKit) -> None:
    services = compose(deploy_kit)["services"]
    for name in (*CARE_SERVICES, "topic-init"):
        assert unknown_settings(deploy_kit, services[name]["environment"]) == [], name
    worker_env = services["worker-1"]["environment"]
    assert worker_env["PIPELINE_SMTP_RELAY_HOST"] == "mailpit"
    assert worker_env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert worker_env["PIPELINE_LOG_FORMAT"] == "json"


def test_compose_settings_are_valid_values(deploy_kit: DeployKit, monkeypatch: Any) -> None:
    env = compose(deploy_kit)["services"]["worker-1"]["environment"]
    for name, value in env.items():
        # "${VAR:-default}" is compose's interpolation: the default is what a laptop gets
        monkeypatch.setenv(name, re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value))
    settings = Settings()
    assert settings.support_addresses == ["support@example.com"]
    assert settings.smtp_relay_port == 1025 and settings.log_format == "json"


def test_compose_ingest_starts_beyond_localhost(deploy_kit: DeployKit, monkeypatch: Any) -> None:
    env = compose(deploy_kit)["services"]["ingest"]["environment"]
    for name, value in env.items():
        monkeypatch.setenv(name, re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value))
    monkeypatch.setenv("PIPELINE_INGEST_HOST", "0.0.0.0")  # the image's
    check_exposure(Settings())  # raises ConfigError when ingest would refuse to listen
    env_files = compose(deploy_kit)["services"]["ingest"]["env_file"]
    assert all(f["required"] is False for f in env_files)  # optional: the secrets file


def test_env_example_names_only_settings(deploy_kit: DeployKit) -> None:
    lines = (DEPLOY / "care-router.env.example").read_text().splitlines()
    names = [line.lstrip("# ").split("=", 1)[0] for line in lines if "=" in line]
    assert len(names) > 15
    assert unknown_settings(deploy_kit, names) == []


def test_every_file_compose_mounts_exists(deploy_kit: DeployKit) -> None:
    mounted = 0
    for name, svc in compose(deploy_kit)["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
                mounted += 1
    assert mounted >= 8


def test_prometheus_scrapes_every_worker_and_ingest_with_the_alert_rules(
    deploy_kit: DeployKit,
) -> None:
    services = compose(deploy_kit)["services"]
    prom = deploy_kit.load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    for name in ("worker-1", "worker-2"):
        assert f"{name}:{services[name]['environment']['PIPELINE_WEB_PORT']}" in targets
    assert f"ingest:{services['ingest']['environment']['PIPELINE_INGEST_PORT']}" in targets
    mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert set(prom["rule_files"]) <= mounts


def test_grafana_provisions_the_datasource_and_the_dashboard(deploy_kit: DeployKit) -> None:
    grafana = compose(deploy_kit)["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = deploy_kit.load_yaml(
        DEPLOY / "grafana" / "provisioning" / "dashboards" / "care-router.yml"
    )
    path = provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == path
    assert (DEPLOY / "grafana" / "dashboards" / "care-router.json").is_file()
    source = deploy_kit.load_yaml(
        DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


# ---------------------------------------------------------------- topics


def script_topics(deploy_kit: DeployKit) -> dict[str, bool]:
    """Topic name → compacted, from deploy/kafka/create-topics.sh."""
    out: dict[str, bool] = {}
    for line in (DEPLOY / "kafka" / "create-topics.sh").read_text().splitlines():
        m = re.fullmatch(r"topic ([a-z.-]+)( compact)?", line.strip())
        if m:
            out[m.group(1)] = bool(m.group(2))
    return out


def test_topic_script_creates_every_topic_of_the_code_with_its_cleanup_policy(
    deploy_kit: DeployKit,
) -> None:
    expected = {t.name: t.compacted for t in TOPICS}
    expected |= {f"tasks.{d}": False for d in departments(Settings())}
    assert script_topics(deploy_kit) == expected


def test_topic_script_uses_one_partition_count_and_compose_gives_it(deploy_kit: DeployKit) -> None:
    text = (DEPLOY / "kafka" / "create-topics.sh").read_text()
    assert '--partitions "$PARTITIONS"' in text
    assert "cleanup.policy=compact" in text
    services = compose(deploy_kit)["services"]
    init_env = services["topic-init"]["environment"]
    assert (
        init_env["PIPELINE_PARTITIONS"]
        == services["worker-1"]["environment"]["PIPELINE_PARTITIONS"]
    )
    assert (
        init_env["PIPELINE_TOPIC_PREFIX"]
        == services["ingest"]["environment"]["PIPELINE_TOPIC_PREFIX"]
    )


# ---------------------------------------------------------------- image


def test_dockerfile_is_slim_pinned_non_root_and_copies_what_exists(deploy_kit: DeployKit) -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1))
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source
    env = dict(re.findall(r"(PIPELINE_[A-Z_]+)=(\S+)", text))
    assert unknown_settings(deploy_kit, env) == []
    assert "--constraint deploy/constraints.txt" in text
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!deploy/constraints.txt" in ignored and ".venv" in ignored


def test_constraints_pin_every_runtime_dependency() -> None:
    pinned = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pinned[req.name.lower().replace("_", "-")] = spec.version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{name}: add its tested version to deploy/constraints.txt"
        assert req.specifier.contains(pinned[name]), f"{name}=={pinned[name]} outside {dep}"


# ---------------------------------------------------------------- kubernetes


def k8s_docs(deploy_kit: DeployKit) -> list[dict[str, Any]]:
    kustomization = deploy_kit.load_yaml(K8S / "kustomization.yaml")
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = K8S / resource
        assert path.is_file(), resource
        docs += deploy_kit.load_yaml_all(path)
    return docs


def by_kind(deploy_kit: DeployKit, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_docs(deploy_kit) if d["kind"] == kind}


def test_k8s_resources_are_valid_kubernetes_objects(deploy_kit: DeployKit) -> None:
    docs = k8s_docs(deploy_kit)
    for doc in docs:
        # strict: an unknown field (a typo) is an error, as kubectl --validate=strict says
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (worker,) = [d for d in docs if d["kind"] == "StatefulSet"]
    worker["spec"]["podManagmentPolicy"] = "Parallel"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSION, strict=True)


@pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl not installed (it is not in Debian's archive): the kustomize rendering "
    "check is skipped; the resources are still validated against the Kubernetes schemas",
)
def test_kustomize_renders_the_base_with_its_generated_config_maps() -> None:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(K8S)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    maps = {d["metadata"]["name"] for d in rendered if d["kind"] == "ConfigMap"}
    assert {m.rsplit("-", 1)[0] for m in maps} == {"care-router-env", "care-router-workflow"}
    for doc in rendered:
        assert doc["metadata"].get("namespace", "care-router") == "care-router"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            spec = doc["spec"]["template"]["spec"]
            refs = {r["configMapRef"]["name"] for c in spec["containers"] for r in c["envFrom"]
                    if "configMapRef" in r}  # fmt: skip
            mounted = {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v}
            assert refs | mounted <= maps, "kustomize rewrote the references to hashed names"
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_references_only_files_that_exist(deploy_kit: DeployKit) -> None:
    kustomization = deploy_kit.load_yaml(K8S / "kustomization.yaml")
    for gen in kustomization["configMapGenerator"]:
        for file in gen.get("files", []):
            assert (K8S / file.split("=")[-1]).is_file(), file
    assert {d["kind"] for d in k8s_docs(deploy_kit)} >= {
        "Namespace",
        "Secret",
        "Deployment",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
    }


def test_k8s_workflow_is_valid_and_has_the_departments_of_the_topic_script(
    deploy_kit: DeployKit,
) -> None:
    # The base ships a copy of the default workflow (kustomize reads only files below it);
    # an overlay replaces it. Its departments must have their task topics.
    from pipeline.domain.workflow import load_workflow

    deployed = load_workflow(K8S / "workflow.yaml").task_departments()
    assert deployed == departments(Settings.model_construct())
    assert {f"tasks.{d}" for d in deployed} == {
        t for t in script_topics(deploy_kit) if t.startswith("tasks.")
    }


def test_k8s_settings_and_secrets_are_settings_the_code_reads(deploy_kit: DeployKit) -> None:
    kustomization = deploy_kit.load_yaml(K8S / "kustomization.yaml")
    (env,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "care-router-env"]
    assert unknown_settings(deploy_kit, env["literals"]) == []
    secret = by_kind(deploy_kit, "Secret")["care-router-secrets"]
    assert unknown_settings(deploy_kit, secret["stringData"]) == []
    secret_fields = {
        f"PIPELINE_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    assert set(secret["stringData"]) <= secret_fields  # secrets only in the Secret
    assert not set(e.split("=")[0] for e in env["literals"]) & secret_fields


def test_k8s_ingest_has_every_webhook_credential(deploy_kit: DeployKit, monkeypatch: Any) -> None:
    kustomization = deploy_kit.load_yaml(K8S / "kustomization.yaml")
    (env,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "care-router-env"]
    for name, value in (e.split("=", 1) for e in env["literals"]):
        monkeypatch.setenv(name, value)
    for name, value in by_kind(deploy_kit, "Secret")["care-router-secrets"]["stringData"].items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.ingest_host == "0.0.0.0" and not settings.ingest_allow_unauthenticated
    assert unauthenticated_endpoints(settings) == []
    check_exposure(settings)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def test_ingest_deployment_behind_a_service_and_workers_in_a_statefulset(
    deploy_kit: DeployKit,
) -> None:
    ingest = by_kind(deploy_kit, "Deployment")["ingest"]
    worker = by_kind(deploy_kit, "StatefulSet")["worker"]
    services = by_kind(deploy_kit, "Service")
    labels = ingest["spec"]["template"]["metadata"]["labels"]
    assert services["ingest"]["spec"]["selector"].items() <= labels.items()
    assert worker["spec"]["serviceName"] == "worker"
    assert services["worker"]["spec"]["clusterIP"] == "None"  # stable identities
    assert worker["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    for workload in (ingest, worker):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        for container in spec["containers"]:
            requests = container["resources"]["requests"]
            assert requests["cpu"] and requests["memory"]
            refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
            assert refs == {"care-router-env", "care-router-secrets"}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/etc/care-router"] == "workflow"


def test_worker_probes_liveness_on_healthz_and_readiness_on_recovery(deploy_kit: DeployKit) -> None:
    worker = by_kind(deploy_kit, "StatefulSet")["worker"]
    (container,) = pod_spec(worker)["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["web"]
    kustomization = deploy_kit.load_yaml(K8S / "kustomization.yaml")
    literals = dict(
        e.split("=", 1) for g in kustomization["configMapGenerator"] for e in g.get("literals", [])
    )
    assert int(literals["PIPELINE_WEB_PORT"]) == port
    rules_path = Path(literals["PIPELINE_RULES_PATH"])
    assert str(rules_path.parent) == "/etc/care-router" and rules_path.name == "workflow.yaml"
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port


def test_pod_disruption_budgets_select_the_workloads(deploy_kit: DeployKit) -> None:
    pdbs = by_kind(deploy_kit, "PodDisruptionBudget")
    for name, workload in (
        ("worker", by_kind(deploy_kit, "StatefulSet")["worker"]),
        ("ingest", by_kind(deploy_kit, "Deployment")["ingest"]),
    ):
        selector = pdbs[name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()


def test_package_metadata_uses_the_spdx_license_form() -> None:
    # The `license = {text = ...}` table is deprecated by setuptools (a build warning).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    for name in project["license-files"]:
        assert "Apache License" in (ROOT / name).read_text()
