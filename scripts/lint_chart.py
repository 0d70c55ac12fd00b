#!/usr/bin/env python3
"""Checks charts/kvstash offline: `helm lint --strict`, then renders with several value sets and
checks the manifests' structure (what a cluster would reject, and what the chart promises:
probes on /healthz of the metrics port, the socket directory on a hostPath shared with engine
pods, no hostIPC/hostNetwork, the config cachesvc gets). Run through scripts/lint_chart.sh.

With --cachesvc BINARY, every rendered configuration (each value set below and each file in the
chart's examples/) is also given to `BINARY --check-config` with the container's arguments (the
kubelet's $(VAR) expansions replaced by sample values): cachesvc must accept it.

What this cannot check: admission by a real API server (OpenAPI schemas of every field), the
cachesvc image itself, and the pods running. docs/deploy.md says so.
"""
import copy
import json
import os
import re
import subprocess
import sys
import tempfile

import helm_python as helm
import yaml

# YAML keys cachesvc accepts: every key of its embedded default (`cachesvc
# --print-default-config`, the binary given with --cachesvc), else the list below. The chart must
# not render anything else (cachesvc refuses unknown keys), and values.yaml's `config` must cover
# every key but the ones the chart sets itself (CHART_MANAGED).
CACHESVC_KEYS = {
    "listen", "arena_socket", "ready_file", "log_level", "metrics.address", "metrics.port",
    "limits.max_message_bytes", "limits.max_keys_per_request", "limits.max_chunk_bytes",
    "limits.stream_chunk_bytes", "limits.max_list_limit", "limits.stream_timeout_ms",
    "limits.rpc_threads", "limits.shutdown_grace_ms", "storage.data_dir", "storage.cpu_capacity",
    "storage.ssd_capacity", "storage.high_watermark", "storage.low_watermark",
    "storage.reservation_ms", "storage.lease_ms", "storage.max_lease_ms",
    "storage.ssd_admission_hits", "storage.ssd_io_threads", "storage.cpu_eviction_policy",
    "storage.ssd_eviction_policy",
}
CHART_MANAGED = {"listen", "local_listen", "arena_socket", "ready_file", "storage.data_dir",
                 "tls.cert", "tls.key", "tls.ca", "auth.tokens_file", "peers.secret_file"}
FROM_BINARY = False
CACHESVC = None  # the binary given with --cachesvc: rendered configs go through --check-config
# Values of the $(VAR) references in the container's args, for --check-config.
SAMPLE_ENV = {"NODE_NAME": "node-a", "POD_IP": "10.1.2.3"}

K8S_VERSION = "1.30"
SOCKET_DIR = "/run/kvstash"
DATA_DIR = "/var/lib/kvstash"

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def flatten(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, path + ".")
        else:
            yield path, value


def merge(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def render(chart, values):
    rendered = chart.render(values, name="kv", namespace="infra", is_install=True)
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                docs.append((path, doc))
    return docs


def check_render(label, chart, values):
    docs = render(chart, values)
    by_kind = {}
    for path, doc in docs:
        check(isinstance(doc, dict), f"{label}: {path} is not a mapping")
        for field in ("apiVersion", "kind", "metadata"):
            check(field in doc, f"{label}: {path} lacks {field}")
        check(bool(doc.get("metadata", {}).get("name")), f"{label}: {path} has no name")
        by_kind.setdefault(doc["kind"], []).append(doc)

    check(len(by_kind.get("DaemonSet", [])) == 1, f"{label}: expected one DaemonSet")
    check(len(by_kind.get("ConfigMap", [])) == 1, f"{label}: expected one ConfigMap")
    ds = by_kind["DaemonSet"][0]
    config = yaml.safe_load(by_kind["ConfigMap"][0]["data"]["cachesvc.yaml"])
    pod = ds["spec"]["template"]
    spec = pod["spec"]

    # Selector and labels.
    selector = ds["spec"]["selector"]["matchLabels"]
    pod_labels = pod["metadata"]["labels"]
    check(all(pod_labels.get(k) == v for k, v in selector.items()),
          f"{label}: DaemonSet selector does not match its pod labels")

    # Node-local sharing without host namespaces.
    for host_flag in ("hostIPC", "hostNetwork", "hostPID"):
        check(not spec.get(host_flag, False), f"{label}: {host_flag} must stay off")
    volumes = {v["name"]: v for v in spec["volumes"]}
    sock = volumes.get("socket-dir", {})
    check(sock.get("hostPath", {}).get("path") == values["socket"]["hostPath"],
          f"{label}: socket-dir must be the hostPath {values['socket']['hostPath']}")

    # The container: config, probes, mounts.
    containers = spec["containers"]
    check(len(containers) == 1, f"{label}: expected one container")
    c = containers[0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    port = values["config"]["metrics"]["port"]
    check(ports.get("metrics") == port, f"{label}: metrics containerPort != config port {port}")
    check(config["metrics"]["port"] == port, f"{label}: rendered config port differs")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c.get(probe, {}).get("httpGet", {})
        check(get.get("path") == "/healthz" and get.get("port") == "metrics",
              f"{label}: {probe} must GET /healthz on the metrics port")
    args = c["args"]
    check(args[:2] == ["--config", "/etc/kvstash/cachesvc.yaml"], f"{label}: --config missing")
    for extra in values.get("extraArgs", []):
        check(extra in args, f"{label}: extra arg {extra} missing")
    all_mounts = [m for k in spec.get("initContainers", []) + containers
                  for m in k.get("volumeMounts", [])]
    for m in all_mounts:
        check(m["name"] in volumes, f"{label}: mount {m['name']} has no volume")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    check(mounts.get("socket-dir") == SOCKET_DIR, f"{label}: socket dir mount")
    check(mounts.get("config") == "/etc/kvstash", f"{label}: config mount")

    # The configuration cachesvc gets: in cluster mode a TCP listener for the peers and the unix
    # socket as local_listen, else the unix socket as listen.
    socket = f"unix://{SOCKET_DIR}/{values['socket']['name']}"
    peers = values["peers"]
    cluster = bool(peers.get("etcdEndpoints") or values["config"].get("cluster", {}).get("etcd")
                   or values["config"].get("peers", {}).get("addresses")
                   or peers.get("tcpListener"))
    env_names = {e["name"] for e in c.get("env", [])}
    if cluster:
        check(config["listen"] == f"{peers['listenAddress']}:{peers['port']}",
              f"{label}: cluster mode must listen on TCP {peers['listenAddress']}:{peers['port']}")
        check(config.get("local_listen") == socket,
              f"{label}: cluster mode's local_listen must be the shared unix socket")
        check(ports.get("grpc") == peers["port"], f"{label}: grpc containerPort != peers.port")
        check("POD_IP" in env_names, f"{label}: POD_IP must come from the downward API")
        if not values["config"].get("peers", {}).get("advertise"):
            check(f"--advertise=$(POD_IP):{peers['port']}" in args,
                  f"{label}: cluster mode must advertise $(POD_IP):{peers['port']}")
        if peers.get("ucxPortRange"):
            check("UCX_TCP_PORT_RANGE" in env_names, f"{label}: UCX_TCP_PORT_RANGE missing")
    else:
        check(config["listen"] == socket,
              f"{label}: listen does not point into the shared socket directory")
        check("local_listen" not in config, f"{label}: local_listen without cluster mode")
        check("grpc" not in ports, f"{label}: a grpc port without cluster mode")
    check(config["storage"]["data_dir"] == DATA_DIR, f"{label}: data_dir")
    for key, _ in flatten(config):
        check(key in CACHESVC_KEYS, f"{label}: cachesvc does not know config key {key}")

    # Node identity from the downward API; hostPath volumes created on demand.
    env = {e["name"]: e for e in c.get("env", [])}
    check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
          == "spec.nodeName", f"{label}: NODE_NAME must come from spec.nodeName")
    for v in spec["volumes"]:
        if "hostPath" in v:
            check(v["hostPath"].get("type") == "DirectoryOrCreate",
                  f"{label}: hostPath {v['name']} must be DirectoryOrCreate")
    # Secrets: mounted read-only where the rendered config points.
    for name, section, keys, path in (("tls", "tls", ("cert", "key", "ca"), "/etc/kvstash/tls"),
                                      ("tenants", "auth", ("tokens_file",), "/etc/kvstash/tenants"),
                                      ("peers", "peers", ("secret_file",), "/etc/kvstash/peers")):
        enabled = (values[name].get("enabled") if name != "peers"
                   else bool(values["peers"].get("secretName")))
        if enabled:
            check(volumes.get(name, {}).get("secret", {}).get("secretName")
                  == values[name]["secretName"], f"{label}: {name} Secret volume")
            check(mounts.get(name) == path, f"{label}: {name} mount")
            for k in keys:
                check(str(config.get(section, {}).get(k, "")).startswith(path + "/"),
                      f"{label}: config {section}.{k} must point into {path}")
        else:
            check(name not in volumes, f"{label}: no {name} volume expected")
    for endpoint in values["peers"].get("etcdEndpoints", []):
        check(any(a.startswith("--etcd=") and endpoint in a for a in args),
              f"{label}: etcd endpoint {endpoint} not passed")

    if CACHESVC:
        check_config_accepted(label, config, args)

    # Disruption budget and network policy select the pods.
    for kind, key in (("PodDisruptionBudget", "podDisruptionBudget"),
                      ("NetworkPolicy", "networkPolicy")):
        objs = by_kind.get(kind, [])
        if values[key]["enabled"]:
            check(len(objs) == 1, f"{label}: expected one {kind}")
            sel = (objs[0]["spec"]["selector"] if kind == "PodDisruptionBudget"
                   else objs[0]["spec"]["podSelector"])["matchLabels"]
            check(all(pod_labels.get(k) == v for k, v in sel.items()),
                  f"{label}: {kind} does not select the pods")
        else:
            check(not objs, f"{label}: no {kind} expected")
    if values["networkPolicy"]["enabled"] and by_kind.get("NetworkPolicy"):
        open_ports = [p.get("port") for rule in by_kind["NetworkPolicy"][0]["spec"]["ingress"]
                      for p in rule.get("ports", [])]
        check(("grpc" in open_ports) == cluster,
              f"{label}: the NetworkPolicy must open the grpc port exactly in cluster mode")
        if cluster and peers.get("ucxPortRange"):
            low = int(peers["ucxPortRange"].split("-")[0])
            check(low in open_ports, f"{label}: the NetworkPolicy must open the UCX port range")
    validate_schemas(label, docs)

    mode = values["ssd"]["mode"]
    data = volumes.get("data")
    if mode == "none":
        check(data is None, f"{label}: no data volume expected")
        check(str(config["storage"]["ssd_capacity"]) == "0", f"{label}: ssd_capacity must be 0")
    else:
        check(data is not None and mounts.get("data") == DATA_DIR, f"{label}: data volume")
        kind = {"hostPath": "hostPath", "ephemeral": "ephemeral", "emptyDir": "emptyDir"}[mode]
        check(data is not None and kind in data, f"{label}: data volume is not {kind}")

    # Metrics Service and ServiceMonitor.
    services = by_kind.get("Service", [])
    if values["metrics"]["service"]["enabled"]:
        check(len(services) == 1, f"{label}: expected the metrics Service")
        svc = services[0]
        check(all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
              f"{label}: Service selector does not select the pods")
        check(svc["spec"]["ports"][0]["targetPort"] == "metrics", f"{label}: Service port")
        svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
        if cluster:
            check(svc_ports.get("grpc", {}).get("port") == peers["port"]
                  and svc_ports["grpc"].get("targetPort") == "grpc",
                  f"{label}: Service grpc port must be peers.port onto the grpc containerPort")
        else:
            check("grpc" not in svc_ports, f"{label}: no grpc Service port expected")
    else:
        check(not services, f"{label}: no Service expected")
    monitors = by_kind.get("ServiceMonitor", [])
    if values["metrics"]["serviceMonitor"]["enabled"]:
        check(len(monitors) == 1, f"{label}: expected a ServiceMonitor")
        sm = monitors[0]
        svc_labels = services[0]["metadata"]["labels"]
        check(all(svc_labels.get(k) == v
                  for k, v in sm["spec"]["selector"]["matchLabels"].items()),
              f"{label}: ServiceMonitor does not select the Service")
        check(sm["spec"]["endpoints"][0]["port"] == "metrics", f"{label}: ServiceMonitor port")
        for k, v in values["metrics"]["serviceMonitor"].get("labels", {}).items():
            check(sm["metadata"]["labels"].get(k) == v, f"{label}: ServiceMonitor label {k}")
    else:
        check(not monitors, f"{label}: no ServiceMonitor expected")
    return pod["metadata"]["annotations"]["checksum/config"]


def check_config_accepted(label, config, args):
    """`cachesvc --check-config` on the rendered config and the container's flags."""
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: SAMPLE_ENV.get(m.group(1), m.group(0)), a)
                for a in args]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(config, f)
        f.flush()
        flags = [a for i, a in enumerate(expanded) if i >= 2]  # after --config PATH
        result = subprocess.run([CACHESVC, "--config", f.name, *flags, "--check-config"],
                                capture_output=True, text=True, timeout=60)
    check(result.returncode == 0,
          f"{label}: cachesvc --check-config refused the rendered config: "
          f"{(result.stdout + result.stderr).strip()}")


def validate_schemas(label, docs):
    """Every manifest against Kubernetes' own OpenAPI schemas (kubernetes-validate, bundled
    schemas, strict: unknown fields are errors). CRDs (ServiceMonitor) have no bundled schema."""
    try:
        import kubernetes_validate
    except ImportError:
        failures.append("kubernetes-validate is not installed (scripts/lint_chart.sh installs it)")
        return
    for path, doc in docs:
        if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{label}: {path}: schema: {error.message} at {list(error.path)}")
        except Exception as error:  # a version or kind without a schema
            failures.append(f"{label}: {path}: cannot validate: {error}")


def expect_failure(label, chart, values):
    try:
        chart.validate_schema(values)
        render(chart, values)
    except helm.HelmError as error:
        print(f"rejected as expected: {label}: {str(error).splitlines()[0][:160]}")
        return
    failures.append(f"{label}: should have been rejected")


def load_cachesvc_keys(binary):
    text = subprocess.run([binary, "--print-default-config"], check=True, capture_output=True,
                          text=True).stdout
    return {k for k, _ in flatten(yaml.safe_load(text))}


def main():
    global CACHESVC_KEYS, CACHESVC
    chart_dir = sys.argv[1]
    if len(sys.argv) > 3 and sys.argv[2] == "--cachesvc":
        CACHESVC = sys.argv[3]
        CACHESVC_KEYS = load_cachesvc_keys(sys.argv[3])
        print(f"cachesvc keys: {len(CACHESVC_KEYS)} from {sys.argv[3]} --print-default-config")
        with open(os.path.join(chart_dir, "values.yaml")) as f:
            value_keys = {k for k, _ in flatten(yaml.safe_load(f)["config"])}
        missing = CACHESVC_KEYS - CHART_MANAGED - value_keys
        unknown = value_keys - CACHESVC_KEYS
        check(not missing, f"values.yaml config lacks cachesvc keys: {sorted(missing)}")
        check(not unknown, f"values.yaml config has keys cachesvc does not know: {sorted(unknown)}")
    report = helm.lint(chart_dir, strict=True)
    for message in report.get("messages", []):
        print(f"lint: severity {message['severity']}: {message['path']}: {message['error']}")
        check(message["severity"] < 2, f"lint: {message['error']}")
    check(not report.get("errors"), f"lint errors: {report.get('errors')}")

    chart = helm.Chart.load(chart_dir)
    defaults = chart.values
    variants = {
        "defaults": {},
        "ssd none": {"ssd": {"mode": "none"}},
        "ssd ephemeral": {"ssd": {"mode": "ephemeral", "storageClassName": "topolvm"}},
        "ssd emptyDir": {"ssd": {"mode": "emptyDir", "size": "10Gi"}},
        "monitoring": {"metrics": {"serviceMonitor": {"enabled": True,
                                                      "labels": {"release": "prom"}}}},
        "no metrics service": {"metrics": {"service": {"enabled": False}}},
        "custom": {"config": {"metrics": {"port": 9500}, "log_level": "debug",
                              "limits": {"rpc_threads": 16}},
                   "socket": {"hostPath": "/var/run/kv", "name": "kv.sock"},
                   "extraArgs": ["--ssd-io-threads=8"],
                   "nodeSelector": {"nvidia.com/gpu.present": "true"},
                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                   "initContainer": {"enabled": False}},
        "security": {"tls": {"enabled": True, "secretName": "node-tls"},
                     "tenants": {"enabled": True, "secretName": "tenants"},
                     "peers": {"secretName": "cluster-secret",
                               "etcdEndpoints": ["http://etcd-0.etcd:2379",
                                                 "http://etcd-1.etcd:2379"]},
                     "networkPolicy": {"enabled": True},
                     "podDisruptionBudget": {"enabled": False}},
        "static peers, plain TCP": {"peers": {"secretName": "cluster-secret", "port": 7300,
                                              "ucxPortRange": ""},
                                    "config": {"peers": {"addresses": ["10.0.0.2:7300"]},
                                               "tls": {"insecure_tcp": True}},
                                    "networkPolicy": {"enabled": True}},
        "etcd in config, advertise set": {
            "peers": {"secretName": "cluster-secret", "listenAddress": "[::]"},
            "tls": {"enabled": True, "secretName": "node-tls"},
            "config": {"cluster": {"etcd": ["http://etcd:2379"], "replicas": 2},
                       "peers": {"advertise": "node-a.example:7100"}}},
    }
    examples = sorted(f for f in os.listdir(os.path.join(chart_dir, "examples"))
                      if f.endswith(".yaml"))
    for name in examples:
        with open(os.path.join(chart_dir, "examples", name)) as f:
            variants[f"example {name}"] = yaml.safe_load(f)
    checksums = {}
    for label, override in variants.items():
        values = merge(defaults, override)
        try:
            checksums[label] = check_render(label, chart, values)
        except helm.HelmError as error:
            failures.append(f"{label}: render failed: {error}")
        print(f"rendered: {label}")
    check(checksums.get("defaults") != checksums.get("custom"),
          "checksum/config must change with the config")

    expect_failure("metrics port 0", chart, merge(defaults, {"config": {"metrics": {"port": 0}}}))
    expect_failure("unknown ssd mode", chart, merge(defaults, {"ssd": {"mode": "nfs"}}))
    expect_failure("listen set by hand", chart, merge(defaults, {"config": {"listen": "x:1"}}))
    expect_failure("tls without a Secret", chart, merge(defaults, {"tls": {"enabled": True}}))
    expect_failure("tenants without a Secret", chart,
                   merge(defaults, {"tenants": {"enabled": True}}))
    expect_failure("tls files set by hand", chart,
                   merge(defaults, {"config": {"tls": {"cert": "/x.pem"}}}))
    expect_failure("monitor without service", chart,
                   merge(defaults, {"metrics": {"service": {"enabled": False},
                                                "serviceMonitor": {"enabled": True}}}))
    expect_failure("local_listen set by hand", chart,
                   merge(defaults, {"config": {"local_listen": "unix:///x.sock"}}))
    expect_failure("cluster without the secret", chart,
                   merge(defaults, {"peers": {"etcdEndpoints": ["http://etcd:2379"]},
                                    "tls": {"enabled": True, "secretName": "node-tls"}}))
    expect_failure("cluster on plain TCP without opting in", chart,
                   merge(defaults, {"peers": {"etcdEndpoints": ["http://etcd:2379"],
                                              "secretName": "cluster-secret"}}))

    if failures:
        print("\n".join(f"FAIL {f}" for f in failures))
        print(f"0 passed, {len(failures)} failed")
        return 1
    checked = " (each config accepted by cachesvc --check-config)" if CACHESVC else ""
    print(f"chart checks: {len(variants)} renders{checked} and 10 rejections as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
