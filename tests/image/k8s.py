"""Read the Kubernetes examples in config/k8s/ the way kubelet would run them (stdlib + PyYAML).

    pod = PodSpec.load("productpage-injected.yaml", PodFacts(ip="198.18.0.10", host_ip="198.18.0.20"))
    init = pod.container("istio-init")
    init.argv(entrypoint=["/usr/local/bin/pilot-agent"])   # command or ENTRYPOINT, then args
    init.env                                              # fieldRef/resourceFieldRef resolved

Kubernetes semantics implemented: `command` replaces the image ENTRYPOINT and `args` its CMD;
`$(VAR)` in command/args/env values expands to earlier env entries (`$$` escapes; unknown
references stay as written); downward-API files (labels, annotations) are rendered as
key="value" lines.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "k8s"


@dataclass(frozen=True)
class PodFacts:
    """What the API server and kubelet would fill in."""

    ip: str
    host_ip: str
    name: str = "productpage-v1-6b746f74dc-x7k2q"
    namespace: str = "default"
    node_name: str = "node-1"


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (k8s.io/kubernetes/third_party/forked/golang/expansion)."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _REF.sub(sub, text)


def _quantity(value: Any, resource: str) -> str:
    """resourceFieldRef with the default divisor: CPU rounded up to whole cores, memory in bytes."""
    text = str(value)
    if resource.endswith("cpu"):
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        return str(max(1, int(-(-cores // 1))))
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, mult in units.items():
        if text.endswith(suffix):
            return str(int(float(text[: -len(suffix)]) * mult))
    return text


@dataclass
class ContainerSpec:
    raw: dict
    env: dict[str, str]
    pod: "PodSpec"

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def image(self) -> str:
        return self.raw["image"]

    def argv(self, entrypoint: list[str]) -> list[str]:
        command = self.raw.get("command")
        base = command if command is not None else entrypoint
        return [expand(str(a), self.env) for a in [*base, *self.raw.get("args", [])]]

    @property
    def security(self) -> dict:
        return self.raw.get("securityContext", {})

    @property
    def user(self) -> str:
        sc = self.security
        if "runAsUser" not in sc:
            return ""
        return f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"

    @property
    def pre_stop(self) -> list[str] | None:
        hook = self.raw.get("lifecycle", {}).get("preStop", {}).get("exec")
        return [expand(str(a), self.env) for a in hook["command"]] if hook else None

    def mount_paths(self, volume_kind: str) -> list[str]:
        """Mount paths of this container's volumes of one kind (emptyDir, downwardAPI, ...)."""
        kinds = {v["name"]: v for v in self.pod.template_spec.get("volumes", [])}
        return [m["mountPath"] for m in self.raw.get("volumeMounts", [])
                if volume_kind in kinds.get(m["name"], {})]

    def http_probes(self) -> dict[str, dict]:
        return {kind: self.raw[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")
                if "httpGet" in self.raw.get(kind, {})}


@dataclass
class PodSpec:
    path: Path
    deployment: dict
    facts: PodFacts
    containers: list[ContainerSpec] = field(default_factory=list)
    init_containers: list[ContainerSpec] = field(default_factory=list)

    @classmethod
    def load(cls, name: str, facts: PodFacts) -> "PodSpec":
        path = EXAMPLES / name
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        pod = cls(path, deployment, facts)
        spec = pod.template_spec
        pod.containers = [ContainerSpec(c, pod._env(c), pod) for c in spec.get("containers", [])]
        pod.init_containers = [ContainerSpec(c, pod._env(c), pod) for c in spec.get("initContainers", [])]
        return pod

    @property
    def template(self) -> dict:
        return self.deployment["spec"]["template"]

    @property
    def template_spec(self) -> dict:
        return self.template["spec"]

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.template["metadata"].get("labels", {}))

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.template["metadata"].get("annotations", {}))

    def container(self, name: str) -> ContainerSpec:
        for c in [*self.init_containers, *self.containers]:
            if c.name == name:
                return c
        raise KeyError(name)

    def downward_api_files(self) -> dict[str, str]:
        """The podinfo volume's files, as kubelet writes them (sorted key="value" lines)."""
        def render(d: dict[str, str]) -> str:
            return "\n".join(f"{k}={json.dumps(str(v))}" for k, v in sorted(d.items()))
        return {"labels": render(self.labels), "annotations": render(self.annotations)}

    def _field(self, path: str) -> str:
        f = self.facts
        values = {
            "metadata.name": f.name, "metadata.namespace": f.namespace, "status.podIP": f.ip,
            "status.hostIP": f.host_ip, "spec.nodeName": f.node_name,
            "spec.serviceAccountName": self.template_spec.get("serviceAccountName", "default"),
        }
        return values[path]

    def _env(self, container: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
                continue
            source = item["valueFrom"]
            if "fieldRef" in source:
                env[item["name"]] = self._field(source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                resource = source["resourceFieldRef"]["resource"]
                kind, _, what = resource.partition(".")
                value = container.get("resources", {}).get(kind, {}).get(what, "0")
                env[item["name"]] = _quantity(value, resource)
            else:
                raise ValueError(f"{self.path.name}: unsupported env source {source}")
        return env
