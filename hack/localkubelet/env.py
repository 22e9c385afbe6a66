"""A container's environment as a kubelet builds it. Pure: ConfigMaps and Secrets come in as lookups.

Order and precedence follow the kubelet: `envFrom` sources in turn, then `env` entries in turn, a later
name replacing an earlier one; `$(VAR)` in a value expands to a variable defined before it (`$$` escapes);
`valueFrom` reads ConfigMap and Secret keys, downward-API fields and resource fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from localkubelet.quantity import ceil_div, parse_quantity

Lookup = Callable[[str], Mapping[str, str] | None]  # object name -> its data, None when there is none


class ConfigError(Exception):
    """The container cannot be created as its spec stands (the kubelet's CreateContainerConfigError)."""


@dataclass(frozen=True)
class PodContext:
    pod: Mapping[str, Any]
    container: Mapping[str, Any]
    pod_ip: str
    host_ip: str
    node_allocatable: Mapping[str, str] = field(default_factory=dict)
    config_maps: Lookup = lambda name: None
    secrets: Lookup = lambda name: None

    @property
    def namespace(self) -> str:
        return self.pod["metadata"].get("namespace", "default")


def expand(text: str, defined: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, others stay as written; `$$` is `$`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$" or i + 1 == len(text):
            out.append(text[i])
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(" and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(defined[name] if name in defined else text[i : end + 1])
            i = end + 1
        elif following == "(":
            out.append(text[i:])
            break
        else:
            out.append(text[i : i + 2])
            i += 2
    return "".join(out)


def container_env(ctx: PodContext) -> dict[str, str]:
    """The variables the container's spec defines, resolved; ConfigError names what is missing."""
    env: dict[str, str] = {}
    for source in ctx.container.get("envFrom") or ():
        prefix = source.get("prefix", "")
        for key, value in _env_source(source, ctx).items():
            if key and "=" not in key:  # the kubelet skips keys that cannot be variable names
                env[prefix + key] = value
    for var in ctx.container.get("env") or ():
        if "valueFrom" in var:
            value = _value_from(var["name"], var["valueFrom"], ctx)
            if value is None:  # an optional reference to something missing leaves the variable out
                continue
        else:
            value = expand(var.get("value", ""), env)
        env[var["name"]] = value
    return env


def _env_source(source: Mapping[str, Any], ctx: PodContext) -> Mapping[str, str]:
    for kind, lookup, what in (
        ("configMapRef", ctx.config_maps, "configmap"),
        ("secretRef", ctx.secrets, "secret"),
    ):
        if kind in source:
            ref = source[kind]
            data = lookup(ref["name"])
            if data is None:
                if ref.get("optional"):
                    return {}
                raise ConfigError(f'{what} "{ref["name"]}" not found')
            return data
    raise ConfigError(f"envFrom source {sorted(source)} is not supported")


def _value_from(name: str, source: Mapping[str, Any], ctx: PodContext) -> str | None:
    if "configMapKeyRef" in source:
        return _key_ref(source["configMapKeyRef"], ctx.config_maps, "ConfigMap", ctx)
    if "secretKeyRef" in source:
        return _key_ref(source["secretKeyRef"], ctx.secrets, "Secret", ctx)
    if "fieldRef" in source:
        return field_value(source["fieldRef"]["fieldPath"], ctx)
    if "resourceFieldRef" in source:
        return resource_value(source["resourceFieldRef"], ctx)
    raise ConfigError(f"{name}: valueFrom {sorted(source)} is not supported")


def _key_ref(ref: Mapping[str, Any], lookup: Lookup, kind: str, ctx: PodContext) -> str | None:
    data = lookup(ref["name"])
    if data is None:
        if ref.get("optional"):
            return None
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {kind} {ctx.namespace}/{ref['name']}")
    return data[ref["key"]]


def field_value(path: str, ctx: PodContext) -> str:
    """A downward-API field of the pod."""
    metadata, spec = ctx.pod["metadata"], ctx.pod.get("spec", {})
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": ctx.namespace,
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": ctx.host_ip,
        "status.hostIPs": ctx.host_ip,
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
    }
    if path in simple:
        return simple[path]
    for prefix, values in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(f"{prefix}['") and path.endswith("']"):
            return (metadata.get(values) or {}).get(path[len(prefix) + 2 : -2], "")
    raise ConfigError(f"fieldRef {path!r} is not supported")


def resource_value(ref: Mapping[str, Any], ctx: PodContext) -> str:
    """A resource field in divisor units, rounded up; an unset limit is the node's allocatable."""
    name = ref.get("containerName") or ctx.container["name"]
    container = next((c for c in ctx.pod["spec"]["containers"] if c["name"] == name), None)
    if container is None:
        raise ConfigError(f"resourceFieldRef names no container {name!r}")
    kind, _, resource = ref["resource"].partition(".")
    if kind not in ("limits", "requests") or not resource:
        raise ConfigError(f"resourceFieldRef resource {ref['resource']!r} is not supported")
    resources = container.get("resources") or {}
    amount = (resources.get(kind) or {}).get(resource)
    if amount is None and kind == "limits":
        amount = ctx.node_allocatable.get(resource)
    value = parse_quantity(amount) if amount is not None else Fraction(0)
    return str(ceil_div(value, parse_quantity(ref.get("divisor") or "1")))


def cpu_request(container: Mapping[str, Any]) -> Fraction | None:
    amount = ((container.get("resources") or {}).get("requests") or {}).get("cpu")
    return None if amount is None else parse_quantity(amount)
