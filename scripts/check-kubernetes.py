#!/usr/bin/env python3
"""Checks the rendered Kubernetes manifests for what a schema cannot see: the "restricted" Pod
Security level, the native sidecar and its probes, the app's DATABASE_URL logging in with the
example password against the SCRAM verifier in the ConfigMap, the config's secret files being
mounted, and the PrometheusRule carrying exactly deploy/prometheus/alerts.yaml's rules.

    check-kubernetes.py RENDERED.yaml ALERTS.yaml

Prints one line per problem and exits 1 if there is any."""

import base64
import hashlib
import hmac
import re
import sys
import tomllib

import yaml

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def restricted(kind_name, pod):
    """Problems against the Pod Security Standards' restricted profile."""
    problems = []
    pod_ctx = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{kind_name}: {flag} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"{kind_name}: volume {volume['name']} is of a type restricted forbids: {kinds}")
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        name = f"{kind_name} container {container['name']}"
        ctx = container.get("securityContext", {})
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = ctx.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as uid 0")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp!r}")
        ports = {p.get("name") for p in container.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = container.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(f"{name}: {probe} names port {port!r}, which it does not declare")
    return problems


def scram_matches(verifier, password):
    """Whether `password` is the one a SCRAM-SHA-256 verifier was made from (RFC 5802/7677)."""
    m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier)
    if not m:
        return False
    iterations, salt, stored_key = int(m[1]), base64.b64decode(m[2]), base64.b64decode(m[3])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest() == stored_key


def strip_hash(name):
    """A generated ConfigMap's or Secret's name without kustomize's content hash."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def sidecar_and_login(deployment, config_maps, secrets):
    """The native sidecar, its config's files mounted, and the app's login."""
    problems = []
    pod = deployment["spec"]["template"]["spec"]
    sidecars = [c for c in pod.get("initContainers", []) if c["name"] == "pgsidecar"]
    if not sidecars or sidecars[0].get("restartPolicy") != "Always":
        return ["Deployment: no native sidecar (initContainer pgsidecar with restartPolicy Always)"]
    sidecar = sidecars[0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe not in sidecar:
            problems.append(f"Deployment: the sidecar has no {probe}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"].rstrip("/"): volumes[m["name"]] for m in sidecar.get("volumeMounts", [])}
    config_path = sidecar["args"][sidecar["args"].index("--config") + 1]
    directory, file_name = config_path.rsplit("/", 1)
    config_map = strip_hash(mounts.get(directory, {}).get("configMap", {}).get("name", ""))
    if config_map not in config_maps or file_name not in config_maps[config_map]["data"]:
        return problems + [f"Deployment: {config_path} is not a mounted ConfigMap key"]
    config = tomllib.loads(config_maps[config_map]["data"][file_name])
    if re.search(r"://[^/@]*:[^/@]*@", config.get("upstream", "")):
        problems.append("ConfigMap: the upstream URL carries a password")
    files = [config.get("admin_token_file")] + [
        u.get("server_password_file") for u in config.get("users", {}).values()]
    for path in filter(None, files):
        directory, item = path.rsplit("/", 1)
        secret = mounts.get(directory, {}).get("secret")
        paths = [i["path"] for i in (secret or {}).get("items", [])]
        if secret is None or (paths and item not in paths) or strip_hash(secret["secretName"]) not in secrets:
            problems.append(f"Deployment: the config's file {path} is not in a mounted Secret")
    for user in config.get("users", {}).values():
        if "server_password" in user or "password" in user:
            problems.append("ConfigMap: a plaintext password in [users]")
    app = pod["containers"][0]
    env = {e["name"]: e for e in app.get("env", [])}
    url = env.get("DATABASE_URL", {}).get("value", "")
    m = re.fullmatch(r"postgres://([^:@]+):\$\((\w+)\)@127\.0\.0\.1:(\d+)/\w+", url)
    if not m:
        return problems + [f"Deployment: the app's DATABASE_URL {url!r} does not log in through the sidecar"]
    user, variable, port = m[1], m[2], m[3]
    if not config.get("listen", "").endswith(f":{port}"):
        problems.append(f"Deployment: DATABASE_URL's port {port} is not the sidecar's listen")
    verifier = config.get("users", {}).get(user, {}).get("scram_verifier")
    if not verifier:
        return problems + [f"ConfigMap: user {user} of DATABASE_URL has no scram_verifier"]
    ref = env[variable]["valueFrom"]["secretKeyRef"]
    secret = secrets.get(strip_hash(ref["name"]))
    if secret is None or ref["key"] not in secret.get("data", {}):
        return problems + [f"Deployment: {variable} names a missing Secret key"]
    password = base64.b64decode(secret["data"][ref["key"]]).decode().strip()
    if not scram_matches(verifier, password):
        problems.append(f"the example password of {user} does not match its scram_verifier: the app would not log in")
    return problems


def main():
    rendered, alerts = sys.argv[1], sys.argv[2]
    documents = [d for d in yaml.safe_load_all(open(rendered)) if d]
    by_kind = {}
    for d in documents:
        by_kind.setdefault(d["kind"], []).append(d)
    config_maps = {strip_hash(d["metadata"]["name"]): d for d in by_kind.get("ConfigMap", [])}
    secrets = {strip_hash(d["metadata"]["name"]): d for d in by_kind.get("Secret", [])}
    problems = []
    for kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        for d in by_kind.get(kind, []):
            problems += restricted(f"{kind} {d['metadata']['name']}", d["spec"]["template"]["spec"])
    deployments = by_kind.get("Deployment", [])
    if not deployments:
        problems.append("no Deployment rendered")
    for d in deployments:
        problems += sidecar_and_login(d, config_maps, secrets)
    for d in by_kind.get("Job", []):
        image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        sidecar_images = {c["image"] for dep in deployments
                          for c in dep["spec"]["template"]["spec"].get("initContainers", [])}
        if image not in sidecar_images:
            problems.append(f"Job {d['metadata']['name']}: image {image} is not the sidecar's")
    rules = by_kind.get("PrometheusRule", [])
    if len(rules) != 1 or rules[0]["spec"] != yaml.safe_load(open(alerts)):
        problems.append(f"PrometheusRule: its groups differ from {alerts}")
    if not by_kind.get("PodMonitor") and not by_kind.get("ServiceMonitor"):
        problems.append("no PodMonitor or ServiceMonitor")
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
