"""deploy/: every manifest parses, and names, labels, ports and configs refer to things that exist."""

from __future__ import annotations

import base64
import ipaddress
import posixpath
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from gateway.config import ConfigError, GatewayConfig, Limits, parse_config
from gateway.fleet.discovery import Target, replica_for
from gateway.scaling import policy_from_mapping

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"

KNOWN_KINDS = {
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
WORKLOADS = ("Deployment", "StatefulSet")
Obj = dict[str, Any]


def load_all() -> list[tuple[Path, Obj]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


OBJECTS = load_all()


def objs(kind: str) -> list[Obj]:
    return [o for _, o in OBJECTS if o["kind"] == kind]


def find(kind: str, name: str, namespace: str) -> Obj:
    hits = [
        o for o in objs(kind) if o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace
    ]
    assert len(hits) == 1, f"{kind} {namespace}/{name}: {len(hits)} found"
    return hits[0]


def pod_containers(workload: Obj) -> list[Obj]:
    containers: list[Obj] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def port_exists(workload: Obj, port: int | str) -> bool:
    for c in pod_containers(workload):
        for p in c.get("ports", []):
            if port in (p.get("name"), p["containerPort"]):
                return True
    return False


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def gateway_config() -> Obj:
    cm = find("ConfigMap", "infergate-config", "infergate")
    doc: Obj = yaml.safe_load(cm["data"]["gateway.yaml"])
    return doc


def secret_value(secret: Obj, key: str) -> str:
    if key in secret.get("stringData", {}):
        value: str = secret["stringData"][key]
        return value
    return base64.b64decode(secret["data"][key]).decode()


def admin_token() -> str:
    return secret_value(find("Secret", "infergate-admin-token", "infergate"), "token")


def parse_with_token_file(doc: Obj, source: str, tmp_path: Path, token: str) -> GatewayConfig:
    """Validate `doc` with the gateway's own parser, its admin_token_file (a path inside the
    container) replaced by a file here holding `token`: the parser checks that the file exists."""
    assert doc.get("admin_token_file"), f"{source}: admin beyond loopback needs admin_token_file"
    token_file = tmp_path / "admin-token"
    token_file.write_text(token + "\n")
    cfg = parse_config({**doc, "admin_token_file": str(token_file)}, source)
    assert cfg.admin_secret() == token
    return cfg


def k8s_gateway_config(tmp_path: Path) -> GatewayConfig:
    return parse_with_token_file(gateway_config(), "infergate-config/gateway.yaml", tmp_path, admin_token())


def test_every_document_is_a_known_kind_with_name_and_namespace() -> None:
    assert len(OBJECTS) >= 12
    seen = set()
    for path, o in OBJECTS:
        assert (o.get("apiVersion"), o.get("kind")) in KNOWN_KINDS, path
        meta = o["metadata"]
        assert meta.get("name"), path
        if o["kind"] != "Namespace":
            assert meta.get("namespace") in {"infergate", "monitoring"}, path
        key = (o["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
    for ns in {o["metadata"].get("namespace") for _, o in OBJECTS} - {None, "monitoring"}:
        find("Namespace", ns, None)  # type: ignore[arg-type]


def test_workload_selectors_match_their_pod_templates() -> None:
    for kind in WORKLOADS:
        for w in objs(kind):
            tpl = w["spec"]["template"]["metadata"]["labels"]
            assert matches(w["spec"]["selector"]["matchLabels"], tpl), w["metadata"]["name"]


def test_services_select_pods_and_target_their_ports() -> None:
    workloads = [w for kind in WORKLOADS for w in objs(kind)]
    for svc in objs("Service"):
        ns = svc["metadata"]["namespace"]
        targets = [
            w
            for w in workloads
            if w["metadata"]["namespace"] == ns
            and matches(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert targets, f"Service {svc['metadata']['name']} selects no pods"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert all(port_exists(w, target) for w in targets), (svc["metadata"]["name"], target)


def test_volumes_probes_and_mounts_resolve() -> None:
    for kind in WORKLOADS:
        for w in objs(kind):
            ns = w["metadata"]["namespace"]
            spec = w["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for v in volumes.values():
                if "configMap" in v:
                    find("ConfigMap", v["configMap"]["name"], ns)
                if "secret" in v:
                    find("Secret", v["secret"]["secretName"], ns)
                if "persistentVolumeClaim" in v:
                    find("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], ns)
            for c in spec["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes, (w["metadata"]["name"], m["name"])
                    assert "subPath" not in m  # ConfigMap updates must reach the files
                for probe in ("readinessProbe", "livenessProbe"):
                    p = c.get(probe)
                    if p:
                        action = p.get("httpGet") or p.get("tcpSocket")
                        assert action and port_exists(w, action["port"]), (c["name"], probe)


def test_statefulset_has_its_headless_service() -> None:
    sts = find("StatefulSet", "tfserving", "infergate")
    svc = find("Service", sts["spec"]["serviceName"], "infergate")
    assert svc["spec"]["clusterIP"] == "None"
    args = " ".join(pod_containers(sts)[0]["args"])
    assert "--port=8500" in args and "--rest_api_port=8501" in args
    cm = find("ConfigMap", "tfserving-config", "infergate")
    for flag in (
        "--model_config_file=/config/models.config",
        "--monitoring_config_file=/config/monitoring.config",
    ):
        assert flag in args and flag.rsplit("/", 1)[1] in cm["data"]


def test_gateway_deployment_matches_its_config(tmp_path: Path) -> None:
    dep = find("Deployment", "infergate", "infergate")
    [c] = pod_containers(dep)
    assert c["args"] == ["run", "--config", "/etc/infergate/gateway.yaml"]
    assert any(m["mountPath"] == "/etc/infergate" for m in c["volumeMounts"])
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 8500, "rest": 8501, "admin": 9901}
    cfg = k8s_gateway_config(tmp_path)  # the gateway's own validator
    assert cfg.listen.admin == "0.0.0.0:9901"  # probes from the kubelet cannot reach loopback
    assert cfg.listen.grpc is not None and cfg.listen.grpc.endswith(f":{ports['grpc']}")
    assert cfg.listen.rest is not None and cfg.listen.rest.endswith(f":{ports['rest']}")
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > cfg.limits.drain_s


GRACE_MARGIN_S = 5  # what a grace period leaves beyond the waits it must cover, at least


def drain_limits() -> tuple[float, float]:
    """(limits.drain_delay_s, limits.drain_s) of the k8s gateway config, as written there."""
    limits = gateway_config()["limits"]
    delay, drain = float(limits["drain_delay_s"]), float(limits["drain_s"])
    assert delay > 0 and drain > 0  # both set on purpose, not left to defaults
    parsed = Limits.model_validate(limits)  # the gateway reads them as written
    assert (parsed.drain_delay_s, parsed.drain_s) == (delay, drain)
    return delay, drain


def test_gateway_grace_period_covers_drain_delay_and_drain() -> None:
    delay, drain = drain_limits()
    spec = find("Deployment", "infergate", "infergate")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= delay + drain + GRACE_MARGIN_S
    # The delay before closing lives in the gateway (drain_delay_s, with GOAWAY and Connection:
    # close); a preStop would hold SIGTERM back and add time the grace period does not cover.
    [c] = spec["containers"]
    assert "preStop" not in c.get("lifecycle", {})


def tfserving_drain_hook() -> tuple[Obj, Obj, list[str]]:
    """(StatefulSet pod spec, tfserving container, its preStop command)."""
    sts = find("StatefulSet", "tfserving", "infergate")
    spec = sts["spec"]["template"]["spec"]
    [c] = [c for c in spec["containers"] if c["name"] == "tfserving"]
    command: list[str] = c["lifecycle"]["preStop"]["exec"]["command"]
    return spec, c, command


def mounted_file(spec: Obj, container: Obj, path: str) -> tuple[Obj, str]:
    """The volume that holds `path` in `container`, and the key of that file in it."""
    directory, key = posixpath.split(path)
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly") is True and "subPath" not in mount
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return volume, key


def test_tfserving_prestop_drains_itself_on_every_gateway_pod(tmp_path: Path) -> None:
    spec, c, command = tfserving_drain_hook()
    bound, script, host, port, token_file, wait = command[1], command[3], *command[4:]
    assert command[0] == "timeout" and command[2] == "bash" and len(command) == 8
    # The script is the ConfigMap's, mounted into this container (the image has bash, no curl).
    volume, key = mounted_file(spec, c, script)
    assert find("ConfigMap", volume["configMap"]["name"], "infergate")["data"][key].startswith("#!/bin/bash")
    # Every gateway pod, through a headless Service on the gateway's admin port.
    svc_name, ns = host.split(".")[:2]
    assert host == f"{svc_name}.{ns}.svc.cluster.local"
    svc = find("Service", svc_name, ns)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"].get("publishNotReadyAddresses") is True
    dep = find("Deployment", "infergate", "infergate")
    assert matches(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    [svc_port] = [p for p in svc["spec"]["ports"] if p["port"] == int(port)]
    assert port_exists(dep, svc_port["targetPort"])
    cfg = k8s_gateway_config(tmp_path)
    assert cfg.listen.admin == f"0.0.0.0:{port}"
    # The same Secret the gateway reads its admin token from.
    volume, key = mounted_file(spec, c, token_file)
    [gw_secret] = [v["secret"] for v in dep["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == gw_secret["secretName"]
    assert key == posixpath.basename(gateway_config()["admin_token_file"])
    # The replica name is built from the pod's IP as discovery builds it
    # (test_drain_script_names_the_replica_as_discovery_does).
    [env] = [e for e in c["env"] if e["name"] == "POD_IP"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # Waits as long as the gateway gives calls in flight; the grace period covers the hard bound.
    _, drain = drain_limits()
    assert drain <= float(wait) < float(bound)
    assert spec["terminationGracePeriodSeconds"] >= float(bound) + GRACE_MARGIN_S


def test_drain_script_calls_the_admin_drain_endpoint() -> None:
    spec, c, command = tfserving_drain_hook()
    volume, key = mounted_file(spec, c, command[3])
    script = find("ConfigMap", volume["configMap"]["name"], "infergate")["data"][key]
    assert 'exchange POST "$address" "/api/replicas/$name/drain"' in script
    assert 'exchange GET "$1" /api/replicas)' in script and 'idle_on "$address"' in script
    assert "Authorization: Bearer %s" in script
    assert "name=${REPLICA_PREFIX:-tfserving}-${ip//:/-}" in script


def test_gateway_config_needs_its_admin_token() -> None:
    doc = gateway_config()
    # As shipped the file is absent here, and without it the admin address is refused outright.
    with pytest.raises(ConfigError, match="admin_token_file"):
        parse_config(doc, "gateway.yaml")
    without = {k: v for k, v in doc.items() if k != "admin_token_file"}
    with pytest.raises(ConfigError, match="admin_token"):
        parse_config(without, "gateway.yaml")


def test_admin_token_secret_is_mounted_where_the_config_reads_it() -> None:
    token_file = gateway_config()["admin_token_file"]
    directory, key = posixpath.split(token_file)
    dep = find("Deployment", "infergate", "infergate")
    spec = dep["spec"]["template"]["spec"]
    [c] = spec["containers"]
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly") is True and "subPath" not in mount
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    secret_vol = volume["secret"]
    assert secret_vol["secretName"] == "infergate-admin-token"
    assert secret_vol.get("optional") is not True  # no Secret: the pod waits, never runs open
    if "items" in secret_vol:
        [item] = [i for i in secret_vol["items"] if i["path"] == key]
        key = item["key"]
    secret = find("Secret", secret_vol["secretName"], "infergate")
    assert key in {**secret.get("data", {}), **secret.get("stringData", {})}
    # An empty token would mean no token; 16 is the gateway's floor for an inline one.
    assert len(secret_value(secret, key).strip()) >= 16
    # The container runs as a non-root user: it must be able to read the file.
    mode = secret_vol.get("defaultMode", 0o644)
    assert mode & 0o004 or (mode & 0o040 and spec["securityContext"].get("fsGroup"))
    # Nested inside the ConfigMap's read-only mount, the mount point would have to be made there.
    others = [m["mountPath"] for m in c["volumeMounts"] if m is not mount]
    assert not any(directory.startswith(o.rstrip("/") + "/") for o in others)


def test_keda_authenticates_with_the_same_secret() -> None:
    so = find("ScaledObject", "tfserving", "infergate")
    triggers = {t["type"]: t for t in so["spec"]["triggers"]}
    api = triggers["metrics-api"]
    assert api["metadata"]["authMode"] == "bearer"
    auth = find("TriggerAuthentication", api["authenticationRef"]["name"], "infergate")
    [ref] = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "token"  # what authMode bearer sends as "Authorization: Bearer"
    dep = find("Deployment", "infergate", "infergate")
    mounted = [v["secret"] for v in dep["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert [s["secretName"] for s in mounted] == [ref["name"]]
    assert ref["key"] == posixpath.basename(gateway_config()["admin_token_file"])
    find("Secret", ref["name"], "infergate")
    # The prometheus trigger reads /metrics through Prometheus: no token involved.
    assert "authenticationRef" not in triggers["prometheus"]


def test_gateway_discovers_the_statefulset_pods_through_its_headless_service(tmp_path: Path) -> None:
    cfg = k8s_gateway_config(tmp_path)  # the gateway's own parser
    assert cfg.replicas == []  # every TF Serving replica comes from DNS
    [entry] = cfg.discovery
    sts = find("StatefulSet", "tfserving", "infergate")
    ns = sts["metadata"]["namespace"]
    svc = find("Service", sts["spec"]["serviceName"], ns)
    # Headless: one A record per pod, not a virtual IP. Asked of the system resolvers (CoreDNS),
    # which every gateway pod shares, so all of them find the same replicas.
    assert svc["spec"]["clusterIP"] == "None"
    assert (entry.dns, entry.srv, entry.resolver) == (
        f"{svc['metadata']['name']}.{ns}.svc.cluster.local",
        None,
        None,
    )
    assert matches(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    # Ready pods only: a terminating pod leaves DNS and every gateway drains it (see the Service).
    assert svc["spec"]["publishNotReadyAddresses"] is False
    # One address family, that of status.podIP, from which the preStop drain names the replica.
    assert (
        svc["spec"].get("ipFamilyPolicy", "SingleStack") == "SingleStack" and "ipFamilies" not in svc["spec"]
    )
    # The gateway connects to the pod IPs: its ports are the containers' ports, which the Service
    # publishes under the same names.
    container_ports = {p["name"]: p["containerPort"] for c in pod_containers(sts) for p in c.get("ports", [])}
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    for port_name, port in (
        ("rest", entry.rest_port),
        ("grpc", entry.grpc_port),
        ("agent", entry.metrics_port),
    ):
        assert container_ports[port_name] == port, port_name
        assert service_ports[port_name] == (port, port_name)
    args = pod_containers(sts)[0]["args"]
    assert f"--port={entry.grpc_port}" in args and f"--rest_api_port={entry.rest_port}" in args
    assert entry.pool == "gpu" and set(cfg.autoscale) == {"gpu"}
    assert entry.capacity_rps == 400 and entry.interval_s == 5


@pytest.mark.skipif(shutil.which("bash") is None, reason="the drain script runs under bash")
@pytest.mark.parametrize("ip", ["10.0.0.7", "fd00::7", "2001:db8::1:0:0:a"])
def test_drain_script_names_the_replica_as_discovery_does(tmp_path: Path, ip: str) -> None:
    [entry] = k8s_gateway_config(tmp_path).discovery
    address = ipaddress.ip_address(ip)
    expected = replica_for(entry, Target(address)).name  # what every gateway calls this pod
    spec, c, command = tfserving_drain_hook()
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    volume, key = mounted_file(spec, c, command[3])
    script = tmp_path / "drain.sh"
    script.write_text(find("ConfigMap", volume["configMap"]["name"], "infergate")["data"][key])
    # The kubelet writes status.podIP in canonical (RFC 5952) form, as str() of an ip_address.
    pod_env = {
        "PATH": "/usr/bin:/bin",
        "REPLICA_PREFIX": env["REPLICA_PREFIX"]["value"],
        "POD_IP": str(address),
    }
    done = subprocess.run(
        ["bash", str(script), "--name"], env=pod_env, capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n"


def test_autoscalers_target_the_statefulset_and_agree_with_the_policy() -> None:
    block = gateway_config()["autoscale"]["gpu"]
    policy = policy_from_mapping(block, "autoscale.gpu")
    hpa = find("HorizontalPodAutoscaler", "tfserving", "infergate")
    so = find("ScaledObject", "tfserving", "infergate")
    for ref in (hpa["spec"]["scaleTargetRef"], so["spec"]["scaleTargetRef"]):
        assert ref["apiVersion"] == "apps/v1"
        find(ref["kind"], ref["name"], "infergate")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        policy.min_replicas,
        policy.max_replicas,
    )
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (
        policy.min_replicas,
        policy.max_replicas,
    )
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "infergate_scale_desired_replicas"
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"pool": "gpu"}
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}


def test_keda_triggers_point_at_real_endpoints() -> None:
    so = find("ScaledObject", "tfserving", "infergate")
    triggers = {t["type"]: t for t in so["spec"]["triggers"]}
    api = triggers["metrics-api"]["metadata"]
    assert api["valueLocation"] == "pools.gpu.desired_replicas"
    url = urlparse(api["url"])
    assert url.path == "/api/scale"
    svc_name, ns = url.hostname.split(".")[:2]  # type: ignore[union-attr]
    svc = find("Service", svc_name, ns)
    assert url.port in [p["port"] for p in svc["spec"]["ports"]]
    prom = triggers["prometheus"]["metadata"]
    assert "infergate_scale_desired_replicas" in prom["query"] and 'pool="gpu"' in prom["query"]
    assert float(prom["threshold"]) == 1.0 and float(api["targetValue"]) == 1.0


def test_prometheus_adapter_serves_the_hpa_metric() -> None:
    cm = find("ConfigMap", "prometheus-adapter", "monitoring")
    rules = yaml.safe_load(cm["data"]["config.yaml"])["externalRules"]
    hpa_metric = find("HorizontalPodAutoscaler", "tfserving", "infergate")["spec"]["metrics"][0]
    names = [r["name"]["as"] for r in rules]
    assert hpa_metric["external"]["metric"]["name"] in names
    assert all("<<.LabelMatchers>>" in r["metricsQuery"] for r in rules)
    sm = find("ServiceMonitor", "infergate", "infergate")
    svc = find("Service", "infergate-admin", "infergate")
    assert matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert sm["spec"]["endpoints"][0]["port"] in [p["name"] for p in svc["spec"]["ports"]]


def test_networkpolicy_guards_the_admin_port_of_the_gateway_pods() -> None:
    np = find("NetworkPolicy", "infergate-admin", "infergate")
    dep = find("Deployment", "infergate", "infergate")
    assert matches(np["spec"]["podSelector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    open_rule, admin_rule = np["spec"]["ingress"]
    assert "from" not in open_rule and {p["port"] for p in open_rule["ports"]} == {8500, 8501}
    assert [p["port"] for p in admin_rule["ports"]] == [9901] and admin_rule["from"]
    # The TF Serving pods' preStop hook drains them through the admin API.
    sts = find("StatefulSet", "tfserving", "infergate")
    peers = [
        p["podSelector"] for p in admin_rule["from"] if "podSelector" in p and "namespaceSelector" not in p
    ]
    assert any(matches(p["matchLabels"], sts["spec"]["template"]["metadata"]["labels"]) for p in peers)


def test_compose_services_and_gateway_config(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"gateway", "tfserving-a", "tfserving-b", "redis"}
    gw = services["gateway"]
    assert (DEPLOY / gw["build"]["context"] / gw["build"]["dockerfile"]).is_file()
    assert "127.0.0.1:9901:9901" in gw["ports"]
    mounted = {}
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src, dst = vol.split(":")[:2]
            if not src.startswith("$"):
                assert (DEPLOY / src).is_file(), (name, src)
                mounted[dst] = DEPLOY / src
    cfg_path = mounted[gw["command"][gw["command"].index("--config") + 1]]
    doc = yaml.safe_load(cfg_path.read_text())
    # Admin on all container addresses (the host's port mapping needs it) takes a token, read from
    # the compose secret that the gateway service mounts at /run/secrets/<name>.
    [secret_name] = gw["secrets"]
    assert doc["admin_token_file"] == f"/run/secrets/{secret_name}"
    token_src = compose["secrets"][secret_name]["file"]
    assert token_src.removesuffix("}").split(":-")[-1] == "./admin-token"  # ${VAR:-default}
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert "/admin-token" in ignored  # the host's token file never lands in the repository
    cfg = parse_with_token_file(doc, str(cfg_path), tmp_path, "compose-token-0123456789")
    assert cfg.listen.admin == "0.0.0.0:9901"
    for r in cfg.replicas:
        assert r.rest is not None and r.rest.split(":")[0] in services
        assert (
            r.rest.endswith(":8501") and "--rest_api_port=8501" in services[r.rest.split(":")[0]]["command"]
        )
    assert urlparse(cfg.cache.store).hostname in services
    for name in ("tfserving-a", "tfserving-b"):
        assert "/config/models.config" in mounted and any(
            "models.config" in a for a in services[name]["command"]
        )


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert list(yaml.safe_load_all(path.read_text()))
