"""The files under `deploy/` as data: YAML objects, rendered overlays, an nginx config.

Tests read the deployment files through this module so that what they check is
what an operator applies: `render()` builds a kustomization the way
`kubectl kustomize` does for the features `deploy/k8s` uses (resources,
namespace, images, strategic-merge patches), and `write_nginx_config()` turns
`deploy/nginx/seatcast.conf.template` into a config a test can start nginx with.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_BASE = K8S / "base"
K8S_EXAMPLE = K8S / "overlays" / "example"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
NGINX_MAIN = DEPLOY / "nginx" / "nginx.conf"
NGINX_TEMPLATE = DEPLOY / "nginx" / "seatcast.conf.template"

# What the template expects, and what the official nginx image substitutes
# (NGINX_ENVSUBST_FILTER=SEATCAST_).
NGINX_PLACEHOLDERS = ("SEATCAST_LISTEN_PORT", "SEATCAST_GATEWAY_SERVERS", "SEATCAST_API_SERVERS")
_PLACEHOLDER = re.compile(r"\$\{(SEATCAST_\w+)\}")

# The kustomization fields `render()` understands; anything else would be
# silently ignored, so the tests refuse it.
KUSTOMIZE_FIELDS = frozenset({"apiVersion", "kind", "namespace", "resources", "images", "patches"})
# List fields Kubernetes merges item by item (by `name`) in a strategic-merge
# patch; every other list is replaced whole.
_MERGED_BY_NAME = frozenset(
    {"containers", "initContainers", "env", "volumes", "volumeMounts", "ports"}
)
_CLUSTER_SCOPED = frozenset({"Namespace"})

Manifest = dict[str, Any]


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document in `path`."""
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def load_yaml(path: Path) -> Any:
    with path.open() as stream:
        return yaml.safe_load(stream)


def kustomization(directory: Path) -> Manifest:
    manifest: Manifest = load_yaml(directory / "kustomization.yaml")
    return manifest


def object_key(manifest: Manifest) -> tuple[str, str]:
    return manifest["kind"], manifest["metadata"]["name"]


def render(directory: Path) -> list[Manifest]:
    """The objects `kubectl kustomize directory` prints (order aside)."""
    spec = kustomization(directory)
    objects: list[Manifest] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        objects.extend(render(path) if path.is_dir() else load_documents(path))
    for patch_entry in spec.get("patches", []):
        for patch in load_documents(directory / patch_entry["path"]):
            objects = apply_patch(objects, patch)
    if "namespace" in spec:
        for manifest in objects:
            if manifest["kind"] not in _CLUSTER_SCOPED:
                manifest["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for container in containers(objects):
            container["image"] = _retag(container["image"], image)
    return objects


def apply_patch(objects: list[Manifest], patch: Manifest) -> list[Manifest]:
    """`objects` with the strategic-merge `patch` applied to its target, which must exist."""
    targets = [m for m in objects if object_key(m) == object_key(patch)]
    if len(targets) != 1:
        raise LookupError(f"patch {object_key(patch)} matches {len(targets)} objects")
    return [merge(m, patch) if m is targets[0] else m for m in objects]


def merge(base: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge as Kubernetes does it for the fields `deploy/k8s` patches."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge(base[key], value, key) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in _MERGED_BY_NAME:
        by_name = {item["name"]: item for item in patch}
        merged_list = [
            merge(item, by_name.pop(item["name"])) if item["name"] in by_name else item
            for item in base
        ]
        return merged_list + list(by_name.values())
    return patch


def _retag(reference: str, image: Mapping[str, str]) -> str:
    name, tag = split_image(reference)
    if name != image["name"]:
        return reference
    new_tag = image.get("newTag", tag)
    return image.get("newName", name) + (f":{new_tag}" if new_tag else "")


def split_image(reference: str) -> tuple[str, str]:
    """(`registry/name`, `tag`) of an image reference; the tag is "" when there is none."""
    name, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:
        return reference, ""
    return name, tag


def pod_specs(objects: Sequence[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(owner, pod spec) for every object that runs pods."""
    for manifest in objects:
        if manifest["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield manifest, manifest["spec"]["template"]["spec"]


def containers(objects: Sequence[Manifest]) -> Iterator[Manifest]:
    for _, spec in pod_specs(objects):
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def find(objects: Sequence[Manifest], kind: str, name: str) -> Manifest:
    for manifest in objects:
        if object_key(manifest) == (kind, name):
            return manifest
    raise LookupError(f"no {kind} {name!r} among the rendered objects")


def data_of(manifest: Manifest) -> dict[str, str]:
    """A ConfigMap's or Secret's values as text (Secret `data` is base64)."""
    values = {k: str(v) for k, v in (manifest.get("stringData") or {}).items()}
    encoded = manifest.get("data") or {}
    if manifest["kind"] == "Secret":
        values.update({k: base64.b64decode(v).decode() for k, v in encoded.items()})
    else:
        values.update({k: str(v) for k, v in encoded.items()})
    return values


def environment(container: Manifest, objects: Sequence[Manifest]) -> dict[str, str]:
    """The variables the container's process sees, as the kubelet assembles them.

    `envFrom` first, in order, then `env`, which wins. A referenced ConfigMap,
    Secret or key that does not exist raises LookupError: the pod would not start.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = _reference(source, "configMapRef", "secretRef")
        values = data_of(find(objects, kind, ref["name"]))
        env.update({source.get("prefix", "") + k: v for k, v in values.items()})
    for variable in container.get("env", []):
        env[variable["name"]] = _value_of(variable, objects)
    return env


def _value_of(variable: Manifest, objects: Sequence[Manifest]) -> str:
    if "valueFrom" not in variable:
        return str(variable.get("value", ""))
    source = variable["valueFrom"]
    kind, ref = _reference(source, "configMapKeyRef", "secretKeyRef")
    values = data_of(find(objects, kind, ref["name"]))
    if ref["key"] not in values:
        raise LookupError(f"{kind} {ref['name']!r} has no key {ref['key']!r}")
    return values[ref["key"]]


def _reference(source: Manifest, config_map: str, secret: str) -> tuple[str, Manifest]:
    """("ConfigMap" or "Secret", the reference) of an env source."""
    if config_map in source:
        return "ConfigMap", source[config_map]
    return "Secret", source[secret]


def render_nginx_template(values: Mapping[str, str]) -> str:
    """The template with every `${SEATCAST_...}` replaced; a missing value raises KeyError."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], NGINX_TEMPLATE.read_text())


def template_placeholders() -> set[str]:
    return set(_PLACEHOLDER.findall(NGINX_TEMPLATE.read_text()))


def server_lines(addresses: Sequence[str], options: str = "max_fails=1 fail_timeout=5s") -> str:
    """`server host:port ...;` directives for an upstream, as the template expects."""
    return " ".join(f"server {address} {options};".replace(" ;", ";") for address in addresses)


def write_nginx_config(
    directory: Path,
    *,
    listen_port: int,
    gateways: Sequence[str],
    api: Sequence[str],
    worker_connections: int = 4096,
) -> Path:
    """A standalone nginx config in `directory` fronting `gateways` and `api`.

    Runs as any user: pid, logs and temp files stay in `directory`. Start it
    with `nginx -p DIRECTORY -c RETURNED_PATH` (it stays in the foreground).
    """
    (directory / "conf.d").mkdir(parents=True, exist_ok=True)
    (directory / "conf.d" / "seatcast.conf").write_text(
        render_nginx_template(
            {
                "SEATCAST_LISTEN_PORT": f"127.0.0.1:{listen_port}",
                "SEATCAST_GATEWAY_SERVERS": server_lines(gateways),
                "SEATCAST_API_SERVERS": server_lines(api, options=""),
            }
        )
    )
    temp = {
        name: directory / "temp" / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")
    }
    main = directory / "nginx.conf"
    main.write_text(
        "daemon off;\n"
        "worker_processes 1;\n"
        f"pid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\n"
        f"events {{ worker_connections {worker_connections}; }}\n"
        "http {\n"
        # $uri, never $request: WebSocket URLs carry ?token=<jwt>.
        "    log_format seatcast '$remote_addr $request_method $uri $status';\n"
        f"    access_log {directory / 'access.log'} seatcast;\n"
        f"    client_body_temp_path {temp['body']};\n"
        f"    proxy_temp_path {temp['proxy']};\n"
        f"    fastcgi_temp_path {temp['fastcgi']};\n"
        f"    uwsgi_temp_path {temp['uwsgi']};\n"
        f"    scgi_temp_path {temp['scgi']};\n"
        "    include conf.d/seatcast.conf;\n"
        "}\n"
    )
    return main


def dockerfile_stages(path: Path = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """Each build stage's (INSTRUCTION, arguments), continuation lines joined.

    Global `ARG` defaults are substituted into `FROM` lines.
    """
    logical = re.sub(r"\\\n(?:\s*#[^\n]*\n)*", " ", path.read_text())
    instructions = [
        (parts[0].upper(), parts[1].strip() if len(parts) > 1 else "")
        for line in logical.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
        for parts in [line.strip().split(None, 1)]
    ]
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions:
        if keyword == "ARG" and not stages:
            name, _, default = arguments.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            stages.append([(keyword, _expand(arguments, global_args))])
        elif stages:
            stages[-1].append((keyword, arguments))
    return stages


def _expand(text: str, variables: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], text)


def nginx_blocks(text: str, header: str) -> list[str]:
    """The bodies of every `header { ... }` block in an nginx config text."""
    text = re.sub(r"#[^\n]*", "", text)
    bodies = []
    for match in re.finditer(re.escape(header) + r"\s*\{", text):
        depth, start = 1, match.end()
        position = start
        while depth:
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            position += 1
        bodies.append(text[start : position - 1])
    return bodies


def nginx_directives(block: str, name: str) -> list[str]:
    """The arguments of each `name ...;` directive directly in `block`."""
    flat = re.sub(r"\{[^{}]*\}", "", re.sub(r"#[^\n]*", "", block))
    found = re.finditer(rf"(?:^|[;\s]){name}\s+([^;]*);", flat)
    return [" ".join(m.group(1).split()) for m in found]
