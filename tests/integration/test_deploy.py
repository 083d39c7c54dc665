"""deploy/: the image, the Kubernetes manifests, compose and nginx, checked offline.

No Docker engine or cluster is needed: every manifest is validated against the
Kubernetes OpenAPI schemas that `kubernetes-validate` ships, and the invariants
that break a deployment silently (a probe on a path the app does not serve, an
env var no process reads, a grace period shorter than the drain) are checked
against the apps and `shared/settings.py` themselves.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from starlette.applications import Starlette
from starlette.routing import Match

from shared.settings import (
    API_VARIABLES,
    GATEWAY_VARIABLES,
    CommonSettings,
    GatewaySettings,
    SettingsError,
    api_settings,
    gateway_settings,
)
from tests.support import manifests
from tests.support.binaries import require_binary
from tests.support.manifests import Manifest

KUBERNETES_VERSION = "1.31"
VALID_SECRET = "x" * 48
ENTRY_POINTS = ("gateway", "booking_api")
# Where each entry point's `create_app(settings)` lives.
APP_MODULES = {"gateway": "gateway.process.app", "booking_api": "booking_api.app"}
VARIABLES: dict[str, tuple[str, ...]] = {
    "gateway": GATEWAY_VARIABLES,
    "booking_api": API_VARIABLES,
}
LOADERS: dict[str, Callable[[Mapping[str, str]], CommonSettings]] = {
    "gateway": gateway_settings,
    "booking_api": api_settings,
}
MINIMAL_ENV: dict[str, dict[str, str]] = {
    "gateway": {"JWT_SECRET": VALID_SECRET},
    "booking_api": {"JWT_SECRET": VALID_SECRET, "DATABASE_URL": "postgresql://u@db:5432/seatcast"},
}
# What the contract (section 3 and 5) says each process serves; used for the
# probe check only where the app itself cannot be built yet.
CONTRACT_GET_PATHS: dict[str, frozenset[str]] = {
    "gateway": frozenset({"/healthz", "/readyz", "/metrics", "/", "/client.js"}),
    "booking_api": frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/api/events"}),
}


def defaults(module: str) -> CommonSettings:
    return LOADERS[module](MINIMAL_ENV[module])


def default_port(module: str) -> int:
    return defaults(module).port


@dataclass(frozen=True)
class Served:
    """Which GET paths a process answers, and where that knowledge came from."""

    module: str
    app: Starlette | None
    # Why the app could not be built (then the contract's list is used).
    missing: str | None = None

    def serves(self, path: str) -> bool:
        if self.app is None:
            return path in CONTRACT_GET_PATHS[self.module]
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
        return any(route.matches(scope)[0] is Match.FULL for route in self.app.routes)


def served(module: str) -> Served:
    """The real app's routes via its `create_app(settings)`; the contract's where it has none yet."""
    try:
        factory = importlib.import_module(APP_MODULES[module]).create_app
    except (ImportError, AttributeError) as error:
        return Served(module, None, missing=f"{APP_MODULES[module]}.create_app: {error}")
    app = factory(defaults(module))
    assert isinstance(app, Starlette)
    return Served(module, app)


@pytest.fixture(scope="module")
def apps() -> dict[str, Served]:
    return {module: served(module) for module in ENTRY_POINTS}


# --- Kubernetes --------------------------------------------------------------


def kustomization_dirs() -> list[Path]:
    return sorted(path.parent for path in manifests.K8S.rglob("kustomization.yaml"))


def rendered(directory: Path) -> list[Manifest]:
    return manifests.render(directory)


@pytest.fixture(scope="module")
def example() -> list[Manifest]:
    return rendered(manifests.K8S_EXAMPLE)


def listed_files(directory: Path) -> list[str]:
    spec = manifests.kustomization(directory)
    return [*spec.get("resources", []), *(p["path"] for p in spec.get("patches", []))]


def optional_patches(directory: Path) -> list[Path]:
    """YAML files in an overlay that its kustomization does not use but offers in a comment."""
    used = set(listed_files(directory))
    return sorted(
        path
        for path in directory.glob("*.yaml")
        if path.name != "kustomization.yaml" and path.name not in used
    )


def validate(manifest: Manifest) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def module_of(container: Manifest) -> str:
    command = [*container.get("command", []), *container.get("args", [])]
    assert command, f"container {container['name']} relies on the image's default command"
    return str(command[-1])


def seatcast_containers(objects: Sequence[Manifest]) -> Iterator[tuple[Manifest, str]]:
    for container in manifests.containers(objects):
        yield container, module_of(container)


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: p.name)
def test_kustomizations_list_existing_files_and_known_fields_only(directory: Path) -> None:
    """Every file a kustomization names exists, and it uses no field the renderer would ignore."""
    spec = manifests.kustomization(directory)
    assert spec["kind"] == "Kustomization"
    assert set(spec) <= manifests.KUSTOMIZE_FIELDS, set(spec) - manifests.KUSTOMIZE_FIELDS
    for entry in listed_files(directory):
        assert (directory / entry).exists(), f"{directory}/kustomization.yaml lists missing {entry}"
    for patch in spec.get("patches", []):
        assert set(patch) == {"path"}, f"only file patches are rendered here: {patch}"


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: p.name)
def test_every_yaml_file_is_used_or_offered(directory: Path) -> None:
    """No orphan manifests: each YAML file is listed or named in the kustomization's comments."""
    text = (directory / "kustomization.yaml").read_text()
    for path in optional_patches(directory):
        assert path.name in text, f"{path} is neither used nor offered by {directory}"


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: p.name)
def test_rendered_objects_validate_against_kubernetes_schemas(directory: Path) -> None:
    """Every object base and overlay render is valid for Kubernetes (strict: no unknown field)."""
    objects = rendered(directory)
    assert objects
    keys = [manifests.object_key(m) for m in objects]
    assert len(keys) == len(set(keys)), "two objects share a kind and name"
    for manifest in objects:
        validate(manifest)


@pytest.mark.parametrize("patch", optional_patches(manifests.K8S_EXAMPLE), ids=lambda p: p.name)
def test_optional_patches_apply_and_validate(example: list[Manifest], patch: Path) -> None:
    """An offered patch (Redis Cluster, connections HPA) targets an object and keeps it valid."""
    objects = example
    for document in manifests.load_documents(patch):
        objects = manifests.apply_patch(objects, document)
    for manifest in objects:
        validate(manifest)


def test_schema_validation_catches_a_broken_manifest(example: list[Manifest]) -> None:
    """The validator really checks: a misspelt field in a Deployment is refused."""
    deployment = manifests.find(example, "Deployment", "seatcast-gateway")
    broken = manifests.merge(deployment, {"spec": {"replica": 3}})
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_overlay_matches_kubectl_kustomize(example: list[Manifest]) -> None:
    """Our renderer agrees with `kubectl kustomize`, where kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the overlay is rendered by tests/support only")
    result = subprocess.run(
        [kubectl, "kustomize", str(manifests.K8S_EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    theirs = {manifests.object_key(m): m for m in yaml.safe_load_all(result.stdout) if m}
    ours = {manifests.object_key(m): m for m in example}
    assert theirs == ours


def test_containers_run_the_two_entry_points(example: list[Manifest]) -> None:
    """Each container runs `python -m gateway` or `python -m booking_api`, both present."""
    modules = {module for _, module in seatcast_containers(example)}
    assert modules == set(ENTRY_POINTS)
    for module in modules:
        main = manifests.ROOT / module / "__main__.py"
        if not main.exists():
            pytest.skip(f"{module}/__main__.py is not written yet")


def test_probe_paths_are_served_by_the_apps(
    example: list[Manifest], apps: dict[str, Served]
) -> None:
    """Readiness is /readyz and liveness /healthz, and the app serves both (its real routes)."""
    for container, module in seatcast_containers(example):
        readiness = container["readinessProbe"]["httpGet"]["path"]
        liveness = container["livenessProbe"]["httpGet"]["path"]
        assert (readiness, liveness) == ("/readyz", "/healthz")
        for path in (readiness, liveness):
            assert apps[module].serves(path), f"{module} does not serve {path}"
    missing = [a.missing for a in apps.values() if a.missing]
    if missing:
        pytest.skip("checked against the contract's paths only: " + "; ".join(missing))


def test_probe_and_service_ports_reach_the_listening_port(example: list[Manifest]) -> None:
    """Probes and Services point at the container port, which is the port the process listens on."""
    for container, module in seatcast_containers(example):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        listening = int(manifests.environment(container, example).get("PORT", default_port(module)))
        assert listening == default_port(module), f"{module} moved off its documented port"
        for probe in ("readinessProbe", "livenessProbe"):
            port = container[probe]["httpGet"]["port"]
            assert ports.get(port, port) == listening, f"{module} {probe} port {port}"
    for service in (m for m in example if m["kind"] == "Service"):
        pod = pods_selected(example, service["spec"]["selector"])
        names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service {service['metadata']['name']}"


def pods_selected(objects: Sequence[Manifest], selector: Mapping[str, str]) -> Manifest:
    """The one Deployment's pod template whose labels `selector` matches."""
    matching: list[Manifest] = [
        owner["spec"]["template"]
        for owner, _ in manifests.pod_specs(objects)
        if selector.items() <= owner["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(matching) == 1, f"selector {selector} matches {len(matching)} pod templates"
    return matching[0]


def test_every_variable_set_is_one_the_process_reads(example: list[Manifest]) -> None:
    """No env var in env, ConfigMaps or Secrets that settings.py would ignore (a typo is silent)."""
    for container, module in seatcast_containers(example):
        unread = set(manifests.environment(container, example)) - set(VARIABLES[module])
        assert not unread, f"{module} is given variables it never reads: {sorted(unread)}"


def test_every_value_set_passes_the_settings_checks(example: list[Manifest]) -> None:
    """The values in the manifests are ones the processes accept (bar the JWT placeholder)."""
    for container, module in seatcast_containers(example):
        env = {**manifests.environment(container, example), "JWT_SECRET": VALID_SECRET}
        LOADERS[module](env)


def test_placeholder_secret_is_refused_at_start(example: list[Manifest]) -> None:
    """The example Secret's JWT_SECRET is too short on purpose: a pod using it refuses to start."""
    for container, module in seatcast_containers(example):
        env = manifests.environment(container, example)
        with pytest.raises(SettingsError, match="JWT_SECRET"):
            LOADERS[module](env)


def gateway_drain_seconds(objects: Sequence[Manifest], container: Manifest) -> float:
    env = {**manifests.environment(container, objects), "JWT_SECRET": VALID_SECRET}
    return gateway_settings(env).drain_seconds


def pre_stop_seconds(container: Manifest) -> float:
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep", f"unexpected preStop {command}"
    return float(command[1])


def test_grace_period_covers_the_pause_and_the_drain(example: list[Manifest]) -> None:
    """terminationGracePeriodSeconds > preStop + DRAIN_SECONDS, so no drain ends in SIGKILL."""
    for owner, spec in manifests.pod_specs(example):
        for container in spec["containers"]:
            if module_of(container) != "gateway":
                continue
            needed = pre_stop_seconds(container) + gateway_drain_seconds(example, container)
            assert spec["terminationGracePeriodSeconds"] > needed, owner["metadata"]["name"]


def test_pods_run_as_non_root_with_a_read_only_root(example: list[Manifest]) -> None:
    """Every pod meets the restricted Pod Security Standard the namespace enforces."""
    namespace = manifests.find(example, "Namespace", "seatcast")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    uid = dockerfile_user()[0]
    for owner, spec in manifests.pod_specs(example):
        pod = spec["securityContext"]
        name = owner["metadata"]["name"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] == uid != 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in context["capabilities"], name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: nothing writable at /tmp"


def test_every_container_has_requests_and_limits(example: list[Manifest]) -> None:
    """Requests let the scheduler and the HPA work; limits keep one pod from starving a node."""
    for container in manifests.containers(example):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{container['name']} {kind}"


def test_images_are_pinned(example: list[Manifest]) -> None:
    """No image runs as `:latest` or untagged, in manifests, compose or the Dockerfile."""
    images = [c["image"] for c in manifests.containers(example)]
    images += [s["image"] for s in compose_services().values()]
    images += [stage[0][1].split()[0] for stage in manifests.dockerfile_stages()]
    for image in images:
        _, tag = manifests.split_image(image)
        assert tag, f"{image} has no tag"
        assert tag != "latest", f"{image} is not pinned"


def test_hpa_and_pdbs_target_the_deployments(example: list[Manifest]) -> None:
    """The HPA scales the gateway Deployment and each PDB selects exactly one workload's pods."""
    hpa = manifests.find(example, "HorizontalPodAutoscaler", "seatcast-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = manifests.find(example, target["kind"], target["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the gateway's replica count"
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot roll without dropping everyone"
    for pdb in (m for m in example if m["kind"] == "PodDisruptionBudget"):
        pods_selected(example, pdb["spec"]["selector"]["matchLabels"])


def test_ingress_routes_to_services_and_outlasts_pings(example: list[Manifest]) -> None:
    """Ingress backends exist, /api goes to the API, and idle timeouts exceed the ping interval."""
    ingress = manifests.find(example, "Ingress", "seatcast")
    backends = {
        path["path"]: path["backend"]["service"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends["/api"]["name"] == "seatcast-api"
    assert backends["/"]["name"] == "seatcast-gateway"
    for backend in backends.values():
        service = manifests.find(example, "Service", backend["name"])
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    gateway = next(c for c, m in seatcast_containers(example) if m == "gateway")
    env = {**manifests.environment(gateway, example), "JWT_SECRET": VALID_SECRET}
    ping = gateway_settings(env).ping_interval_seconds
    annotations = ingress["metadata"]["annotations"]
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{name}"]) > ping, name


def hpa_pod_metrics() -> list[str]:
    patch = manifests.load_yaml(manifests.K8S_EXAMPLE / "hpa-connections.yaml")
    return [m["pods"]["metric"]["name"] for m in patch["spec"]["metrics"] if m["type"] == "Pods"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_real_process_accepts_the_manifest_settings_and_answers_probes(
    module: str, example: list[Manifest], request: pytest.FixtureRequest
) -> None:
    """`python -m <module>` with the example overlay's settings starts and serves its probes.

    Only the addresses (Redis, PostgreSQL) and the placeholder key are swapped
    for this machine's; the gateway's /metrics carries what the optional HPA
    patch scales on.
    """
    if not (manifests.ROOT / module / "__main__.py").exists():
        pytest.skip(f"{module}/__main__.py is not written yet")
    container = next(c for c, m in seatcast_containers(example) if m == module)
    env = manifests.environment(container, example)
    env.update(REDIS_URL=request.getfixturevalue("redis_url"))
    env.update(JWT_SECRET=request.getfixturevalue("jwt_secret"))
    if "DATABASE_URL" in env:
        env.update(DATABASE_URL=request.getfixturevalue("database_url"))
    service = request.getfixturevalue("service")(module, env)
    for probe in ("readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert httpx.get(service.http_url + path, timeout=10).status_code == 200, path
    metrics = httpx.get(service.http_url + "/metrics", timeout=10)
    assert metrics.status_code == 200
    if module == "gateway":
        exported = set(re.findall(r"^(\w+)[ {]", metrics.text, re.MULTILINE))
        assert set(hpa_pod_metrics()) <= exported, "the HPA patch scales on an unknown metric"


# --- the image ---------------------------------------------------------------


def final_stage() -> list[tuple[str, str]]:
    return manifests.dockerfile_stages()[-1]


def instruction(stage: Sequence[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for k, arguments in stage if k == keyword]


def dockerfile_user() -> tuple[int, int]:
    """The final stage's `USER uid:gid`, which must be numeric."""
    user = instruction(final_stage(), "USER")[-1]
    assert re.fullmatch(r"\d+:\d+", user), f"USER {user} is not numeric uid:gid"
    uid, gid = user.split(":")
    return int(uid), int(gid)


def test_image_is_multi_stage_and_slim() -> None:
    """A builder stage, then python:3.11-slim with no compiler, package manager run or pip."""
    stages = manifests.dockerfile_stages()
    assert len(stages) >= 2
    assert stages[-1][0][1].startswith("python:3.11-slim")
    runs = " ".join(instruction(final_stage(), "RUN"))
    for forbidden in ("apt-get", "apk ", "gcc", "build-essential", "pip install"):
        assert forbidden not in runs, f"the final stage runs {forbidden}"
    assert any("--from=" in c for c in instruction(final_stage(), "COPY"))


def test_image_runs_as_non_root() -> None:
    """The final stage switches to a numeric, non-zero UID and GID."""
    uid, gid = dockerfile_user()
    assert uid != 0
    assert gid != 0


def test_image_suits_a_read_only_root_filesystem() -> None:
    """No bytecode writes at run time, logs unbuffered, working directory /tmp."""
    env = " ".join(instruction(final_stage(), "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert instruction(final_stage(), "WORKDIR")[-1] == "/tmp"


def test_image_entry_points_and_ports() -> None:
    """`python -m` + gateway by default, listening on all interfaces, exposing both default ports."""
    assert yaml.safe_load(instruction(final_stage(), "ENTRYPOINT")[-1]) == ["python", "-m"]
    assert yaml.safe_load(instruction(final_stage(), "CMD")[-1]) == ["gateway"]
    exposed = {int(p) for e in instruction(final_stage(), "EXPOSE") for p in e.split()}
    assert exposed == {default_port(m) for m in ENTRY_POINTS}
    assert "HOST=0.0.0.0" in " ".join(instruction(final_stage(), "ENV"))


def dockerignored() -> list[str]:
    lines = manifests.DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_image_build_context_has_what_it_copies() -> None:
    """Every COPY source exists in the repository and is not excluded by .dockerignore."""
    ignored = dockerignored()
    assert {".git", ".venv"} <= set(ignored)
    sources = [
        source
        for stage in manifests.dockerfile_stages()
        for copy in instruction(stage, "COPY")
        if "--from=" not in copy
        for source in copy.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (manifests.ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert source.rstrip("/") not in ignored, f"COPY {source}: excluded by .dockerignore"


# --- compose ----------------------------------------------------------------


def compose_services() -> dict[str, Manifest]:
    services: dict[str, Manifest] = manifests.load_yaml(manifests.COMPOSE)["services"]
    return services


def seatcast_services() -> dict[str, str]:
    """Service name -> module, for the services running the seatcast image."""
    return {
        name: service["command"][-1]
        for name, service in compose_services().items()
        if service.get("command") and service["command"][-1] in ENTRY_POINTS
    }


def compose_env(service: Manifest) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping, so keys can be checked"
    return {k: str(v) for k, v in environment.items()}


def test_compose_runs_the_whole_system() -> None:
    """PostgreSQL, Redis, one API, three gateways and nginx in front of them."""
    services = compose_services()
    modules = sorted(seatcast_services().values())
    assert modules == ["booking_api", "gateway", "gateway", "gateway"]
    assert {"postgres", "redis", "nginx"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["nginx"]["ports"] == ["8080:8080"]


def test_compose_starts_in_dependency_order() -> None:
    """Each dependency is waited for until its healthcheck passes, and has one."""
    services = compose_services()
    needs = {
        "booking_api": {"postgres", "redis"},
        "gateway": {"redis"},
    }
    for name, module in seatcast_services().items():
        assert needs[module] <= set(services[name]["depends_on"]), name
    assert set(seatcast_services()) <= set(services["nginx"]["depends_on"])
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], dependency


def test_compose_variables_are_read_and_valid() -> None:
    """Compose sets only variables the processes read, with values they accept."""
    services = compose_services()
    for name, module in seatcast_services().items():
        env = compose_env(services[name])
        assert set(env) <= set(VARIABLES[module]), f"{name}: {set(env) - set(VARIABLES[module])}"
        assert env["JWT_SECRET"].startswith("${JWT_SECRET:?"), "the secret must come from outside"
        settings = LOADERS[module]({**env, "JWT_SECRET": VALID_SECRET})
        assert settings.host == "0.0.0.0"


def test_compose_healthchecks_and_shutdown(apps: dict[str, Served]) -> None:
    """Healthchecks hit /readyz on the listening port; gateways get longer than the drain to stop."""
    services = compose_services()
    for name, module in seatcast_services().items():
        service = services[name]
        settings = LOADERS[module]({**compose_env(service), "JWT_SECRET": VALID_SECRET})
        command = " ".join(service["healthcheck"]["test"])
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)'", command)
        assert url is not None, command
        assert int(url.group(1)) == settings.port
        assert url.group(2) == "/readyz"
        assert apps[module].serves(url.group(2))
        assert service["read_only"] is True
        assert service["tmpfs"] == ["/tmp"]
        if module == "gateway":
            assert isinstance(settings, GatewaySettings)
            grace = float(service["stop_grace_period"].removesuffix("s"))
            assert grace > settings.drain_seconds


# --- nginx ------------------------------------------------------------------


def test_nginx_template_placeholders_are_documented_and_supplied() -> None:
    """The template uses exactly the documented placeholders and compose supplies each."""
    assert manifests.template_placeholders() == set(manifests.NGINX_PLACEHOLDERS)
    nginx = compose_env(compose_services()["nginx"])
    assert set(manifests.NGINX_PLACEHOLDERS) <= set(nginx)
    assert all(p.startswith(nginx["NGINX_ENVSUBST_FILTER"]) for p in manifests.NGINX_PLACEHOLDERS)
    for placeholder in manifests.NGINX_PLACEHOLDERS:
        assert placeholder in manifests.NGINX_TEMPLATE.read_text().split("server {")[0]


def test_nginx_spreads_over_every_gateway_in_compose() -> None:
    """nginx's gateway upstream lists each gateway service once, on its port; /api/ goes to the API."""
    services = compose_services()
    nginx = compose_env(services["nginx"])
    listed = re.findall(r"server\s+([\w.-]+:\d+)", nginx["SEATCAST_GATEWAY_SERVERS"])
    expected = [
        f"{name}:{compose_env(services[name])['PORT']}"
        for name, module in seatcast_services().items()
        if module == "gateway"
    ]
    assert sorted(listed) == sorted(expected)
    api = [n for n, m in seatcast_services().items() if m == "booking_api"]
    assert re.findall(r"server\s+([\w.-]+):", nginx["SEATCAST_API_SERVERS"]) == api


def test_nginx_proxies_websockets_and_outlasts_pings() -> None:
    """HTTP/1.1 with Upgrade/Connection headers, and read timeouts above the ping interval."""
    text = manifests.NGINX_TEMPLATE.read_text()
    assert manifests.nginx_blocks(text, "map $http_upgrade $connection_upgrade")
    ping = gateway_settings(MINIMAL_ENV["gateway"]).ping_interval_seconds
    websocket = manifests.nginx_blocks(text, "location /ws")
    assert len(websocket) == 1
    block = websocket[0]
    assert manifests.nginx_directives(block, "proxy_pass") == ["http://seatcast_gateways"]
    assert manifests.nginx_directives(block, "proxy_http_version") == ["1.1"]
    headers = manifests.nginx_directives(block, "proxy_set_header")
    assert "Upgrade $http_upgrade" in headers
    assert "Connection $connection_upgrade" in headers
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        (timeout,) = manifests.nginx_directives(block, name)
        assert int(timeout.removesuffix("s")) > ping, name
    (api,) = manifests.nginx_blocks(text, "location /api/")
    assert manifests.nginx_directives(api, "proxy_pass") == ["http://seatcast_api"]


def test_nginx_keeps_tokens_out_of_its_access_log() -> None:
    """The compose nginx logs $uri, never $request_uri or $request (they carry ?token=)."""
    text = manifests.NGINX_MAIN.read_text()
    log_format = re.search(r"log_format[^;]*;", text)
    assert log_format is not None
    assert "$request_uri" not in log_format.group(0)
    assert not re.search(r"\$request\b(?!_)", log_format.group(0))
    assert "include conf.d/seatcast.conf;" in text


def nginx_binary() -> str:
    return require_binary("nginx", "apt-get install nginx-light")


def nginx_test(binary: str, prefix: Path, config: Path, *extra: str) -> None:
    result = subprocess.run(
        [binary, "-t", "-p", str(prefix), "-c", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_nginx_accepts_the_rendered_template(tmp_path: Path) -> None:
    """`nginx -t` accepts the template rendered for loopback replicas, as tests will run it."""
    binary = nginx_binary()
    config = manifests.write_nginx_config(
        tmp_path,
        listen_port=18080,
        gateways=["127.0.0.1:18001", "127.0.0.1:18002"],
        api=["127.0.0.1:18000"],
    )
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "temp" / name).mkdir(parents=True)
    nginx_test(binary, tmp_path, config)


def test_nginx_accepts_the_compose_main_config(tmp_path: Path) -> None:
    """`nginx -t` accepts deploy/nginx/nginx.conf with the rendered template in conf.d/."""
    binary = nginx_binary()
    manifests.write_nginx_config(
        tmp_path, listen_port=18080, gateways=["127.0.0.1:18001"], api=["127.0.0.1:18000"]
    )
    main = tmp_path / "compose-nginx.conf"
    # The image's main config has no pid/error_log of its own; keep both here.
    shutil.copy(manifests.NGINX_MAIN, main)
    extra = ("-g", f"pid {tmp_path / 'nginx.pid'}; error_log stderr;")
    try:
        nginx_test(binary, tmp_path, main, *extra)
    except AssertionError as error:
        if "Permission denied" in str(error):
            pytest.skip(f"the compiled-in temp paths need root: {error}")
        raise


def test_nginx_rejects_a_broken_config(tmp_path: Path) -> None:
    """The `nginx -t` check can fail: an unclosed block is refused."""
    binary = nginx_binary()
    config = manifests.write_nginx_config(
        tmp_path, listen_port=18080, gateways=["127.0.0.1:18001"], api=["127.0.0.1:18000"]
    )
    (tmp_path / "conf.d" / "seatcast.conf").write_text("server { listen 18080;")
    with pytest.raises(AssertionError):
        nginx_test(binary, tmp_path, config)


def test_helper_render_is_faithful_to_strategic_merge() -> None:
    """The renderer merges named lists item by item and replaces other lists whole."""
    base: dict[str, Any] = {
        "containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}],
        "args": ["one"],
    }
    patch = {"containers": [{"name": "b", "image": "y:2"}], "args": ["two"]}
    assert manifests.merge(base, patch) == {
        "containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}],
        "args": ["two"],
    }
