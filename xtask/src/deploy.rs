//! `cargo xtask deploy`: checks the files in `deploy/` with the tools that read them, none
//! of which needs a daemon: `kubectl kustomize` renders the Kubernetes manifests, which are
//! then checked object by object; `systemd-analyze verify` reads the units;
//! `docker-compose config` parses the compose file. Building the images needs a Docker
//! daemon and is not checked here. A missing tool is an offence naming what to install.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

/// The Kustomize directories, rendered and checked.
const KUSTOMIZATIONS: [&str; 2] = ["deploy/k8s/base", "deploy/k8s/overlays/demo"];
/// The demo overlay's namespace: every namespaced object must be in it.
const DEMO_NAMESPACE: &str = "harambee-demo";
const UNITS: [&str; 2] = ["harambee-agent.service", "harambee-coordinator.service"];
/// What both units must say, as shipped (deploy/SECURITY-OVERVIEW.md describes them).
const UNIT_SANDBOX: [&str; 14] = [
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "User=harambee",
    "ConfigurationDirectory=harambee",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter=@system-service",
    "UMask=0077",
    "ProtectKernelTunables=yes",
    "RestrictSUIDSGID=yes",
];
const COMPOSE: &str = "deploy/docker/compose.yaml";
const COMPOSE_SERVICES: [&str; 8] = [
    "postgres",
    "bootstrap",
    "coordinator",
    "agent-cleveland",
    "agent-hungary",
    "agent-switzerland",
    "otel-collector",
    "prometheus",
];
const DOCKERFILES: [&str; 2] = [
    "deploy/docker/Dockerfile.coordinator",
    "deploy/docker/Dockerfile.agent",
];
/// The coordinator's serve file and where its keys are declared.
const SERVE_FILES: [&str; 2] = [
    "deploy/docker/coordinator.toml",
    "deploy/systemd/coordinator.toml",
];
const SERVE_FILE_STRUCT: &str = "coordinator/src/cli/mod.rs";

/// Every check's offences.
pub fn all(root: &Path) -> Vec<String> {
    let mut offences = kubernetes(root);
    offences.extend(systemd_units(root));
    offences.extend(compose(root));
    offences.extend(dockerfiles(root));
    offences.extend(serve_files(root));
    offences
}

/// Renders each kustomization and checks what it makes.
pub fn kubernetes(root: &Path) -> Vec<String> {
    let mut offences = Vec::new();
    for dir in KUSTOMIZATIONS {
        let rendered = match run(
            root,
            "kubectl",
            &["kustomize", dir],
            "kubectl 1.27 or later (package `kubectl` of the Kubernetes apt repository; \
             Debian's `kubernetes-client` 1.20 is too old for these kustomizations)",
        ) {
            Ok(out) => out,
            Err(offence) => {
                offences.push(format!("{dir}: {offence}"));
                continue;
            }
        };
        match documents(&rendered) {
            Ok(objects) => {
                let namespace = dir.ends_with("demo").then_some(DEMO_NAMESPACE);
                offences.extend(
                    check_manifests(&objects, namespace)
                        .into_iter()
                        .map(|o| format!("{dir}: {o}")),
                );
            }
            Err(e) => offences.push(format!("{dir}: the rendered YAML does not parse: {e}")),
        }
    }
    offences
}

/// The checks on rendered objects: kinds present, images pinned, probes on the ops port,
/// resources, security contexts, Secret volume modes, no secrets in ConfigMaps, selectors
/// that match the pods, and (with `namespace`) every object in it.
pub fn check_manifests(objects: &[Value], namespace: Option<&str>) -> Vec<String> {
    let mut offences = Vec::new();
    let kind_of = |o: &Value| str_at(o, &["kind"]).unwrap_or_default().to_owned();
    let name_of = |o: &Value| {
        format!(
            "{} {}",
            kind_of(o),
            str_at(o, &["metadata", "name"]).unwrap_or("(no name)")
        )
    };
    let mut wanted = vec![
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ];
    if namespace.is_some() {
        wanted.push("Namespace");
    }
    for kind in wanted {
        if !objects.iter().any(|o| kind_of(o) == kind) {
            offences.push(format!("no {kind}"));
        }
    }
    let deployments: Vec<&Value> = objects
        .iter()
        .filter(|o| kind_of(o) == "Deployment")
        .collect();
    for object in objects {
        let name = name_of(object);
        match kind_of(object).as_str() {
            "Secret" => offences.push(format!(
                "{name}: Secrets are created by the operator (deploy/README.md), never committed"
            )),
            "ConfigMap" => offences.extend(
                configmap_secrets(object)
                    .into_iter()
                    .map(|o| format!("{name}: {o}")),
            ),
            "Deployment" => offences.extend(
                check_deployment(object)
                    .into_iter()
                    .map(|o| format!("{name}: {o}")),
            ),
            "PodDisruptionBudget" | "Service" | "NetworkPolicy" => {
                let path: &[&str] = match kind_of(object).as_str() {
                    "Service" => &["spec", "selector"],
                    "NetworkPolicy" => &["spec", "podSelector", "matchLabels"],
                    _ => &["spec", "selector", "matchLabels"],
                };
                let selector = at(object, path);
                if !deployments.iter().any(|d| {
                    labels_match(selector, at(d, &["spec", "template", "metadata", "labels"]))
                }) {
                    offences.push(format!("{name}: its selector matches no Deployment's pods"));
                }
            }
            _ => {}
        }
        if let Some(ns) = namespace
            && kind_of(object) != "Namespace"
            && str_at(object, &["metadata", "namespace"]) != Some(ns)
        {
            offences.push(format!("{name}: not in the namespace {ns}"));
        }
    }
    offences
}

fn check_deployment(deployment: &Value) -> Vec<String> {
    let mut offences = Vec::new();
    let pod = at(deployment, &["spec", "template", "spec"]);
    let pod_security = at(pod, &["securityContext"]);
    if at(pod_security, &["runAsNonRoot"]).as_bool() != Some(true) {
        offences.push("pod securityContext: runAsNonRoot is not true".to_owned());
    }
    let selector = at(deployment, &["spec", "selector", "matchLabels"]);
    if !labels_match(
        selector,
        at(deployment, &["spec", "template", "metadata", "labels"]),
    ) {
        offences.push("spec.selector does not match the pod template's labels".to_owned());
    }
    let containers = seq_at(pod, &["containers"]);
    if containers.is_empty() {
        offences.push("no containers".to_owned());
    }
    let init = seq_at(pod, &["initContainers"]);
    for (container, is_init) in containers
        .iter()
        .map(|c| (c, false))
        .chain(init.iter().map(|c| (c, true)))
    {
        let name = format!(
            "container {}",
            str_at(container, &["name"]).unwrap_or("(no name)")
        );
        let mut bad = |what: &str| offences.push(format!("{name}: {what}"));
        match str_at(container, &["image"]) {
            None => bad("no image"),
            Some(image) if !image_is_pinned(image) => {
                bad(&format!("image {image} has no tag, or the tag latest"))
            }
            Some(_) => {}
        }
        let security = at(container, &["securityContext"]);
        let either = |key: &[&str]| {
            let own = at(security, key);
            if own.is_null() {
                at(pod_security, key).clone()
            } else {
                own.clone()
            }
        };
        if either(&["runAsNonRoot"]).as_bool() != Some(true) {
            bad("securityContext: runAsNonRoot is not true");
        }
        if at(security, &["readOnlyRootFilesystem"]).as_bool() != Some(true) {
            bad("securityContext: readOnlyRootFilesystem is not true");
        }
        if at(security, &["allowPrivilegeEscalation"]).as_bool() != Some(false) {
            bad("securityContext: allowPrivilegeEscalation is not false");
        }
        let drops = seq_at(security, &["capabilities", "drop"]);
        if !drops.iter().any(|c| c.as_str() == Some("ALL")) {
            bad("securityContext: capabilities.drop does not hold ALL");
        }
        if either(&["seccompProfile", "type"]).as_str() != Some("RuntimeDefault") {
            bad("securityContext: seccompProfile is not RuntimeDefault");
        }
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                if at(container, &["resources", kind, resource]).is_null() {
                    bad(&format!("no resources.{kind}.{resource}"));
                }
            }
        }
        if is_init {
            continue;
        }
        let ops_port = seq_at(container, &["ports"])
            .iter()
            .find(|p| str_at(p, &["name"]) == Some("ops"))
            .and_then(|p| at(p, &["containerPort"]).as_u64());
        if ops_port.is_none() {
            bad("no container port named ops");
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = at(container, &[probe, "httpGet"]);
            let port = at(get, &["port"]);
            let on_ops = port.as_str() == Some("ops") || port.as_u64() == ops_port;
            if str_at(get, &["path"]) != Some(path) || !on_ops {
                bad(&format!(
                    "{probe} is not an httpGet of {path} on the ops port"
                ));
            }
        }
    }
    for volume in seq_at(pod, &["volumes"]) {
        if at(volume, &["secret"]).is_null() {
            continue;
        }
        let name = str_at(volume, &["name"]).unwrap_or("(no name)");
        match at(volume, &["secret", "defaultMode"]).as_u64() {
            Some(mode) if mode & 0o007 == 0 => {}
            Some(mode) => offences.push(format!(
                "secret volume {name}: defaultMode {mode:04o} lets others read the keys"
            )),
            None => offences.push(format!(
                "secret volume {name}: no defaultMode (0644 would let others read the keys)"
            )),
        }
    }
    offences
}

/// What in a ConfigMap's data looks like key material or a password.
fn configmap_secrets(configmap: &Value) -> Vec<String> {
    let Some(data) = at(configmap, &["data"]).as_mapping() else {
        return Vec::new();
    };
    let mut offences = Vec::new();
    for (key, value) in data {
        let key = key.as_str().unwrap_or("?");
        let text = value.as_str().unwrap_or_default();
        if let Some(why) = looks_secret(text) {
            offences.push(format!("data {key} holds {why}"));
        }
    }
    offences
}

/// `Some(what)` when `text` holds PEM armour, a password assignment or a URL with a
/// password (`scheme://user:password@host`).
pub fn looks_secret(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    if lower.contains("-----begin") {
        return Some("PEM armour (key material)");
    }
    if ["password=", "password =", "passwd=", "password:"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return Some("a password");
    }
    for (i, _) in lower.match_indices("://") {
        let rest = &lower[i + 3..];
        let authority = rest.split(['/', '"', '\'', ' ', '\n']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Some("a URL with a password");
        }
    }
    None
}

/// `name:tag` or `name@sha256:…`, and never the tag `latest`.
pub fn image_is_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    // A tag follows the last colon after the last slash (a registry may have a port).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => !tag.is_empty() && tag != "latest",
        None => false,
    }
}

/// Every label a selector asks for is on the pods, and it asks for at least one.
fn labels_match(selector: &Value, labels: &Value) -> bool {
    let (Some(selector), Some(labels)) = (selector.as_mapping(), labels.as_mapping()) else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `systemd-analyze verify` on each unit, and the sandbox directives each must carry.
pub fn systemd_units(root: &Path) -> Vec<String> {
    let mut offences = Vec::new();
    let tmp = std::env::temp_dir().join(format!("xtask-units-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        return vec![format!("creating {}: {e}", tmp.display())];
    }
    // verify refuses a unit whose ExecStart binary does not exist, and the binaries are not
    // installed here: a copy points ExecStart at a binary that exists (this one), with
    // everything else as shipped.
    let stand_in = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/bin/true"));
    for unit in UNITS {
        let path = root.join("deploy/systemd").join(unit);
        let Ok(text) = std::fs::read_to_string(&path) else {
            offences.push(format!("deploy/systemd/{unit}: missing"));
            continue;
        };
        offences.extend(
            missing_directives(unit, &text)
                .into_iter()
                .map(|o| format!("deploy/systemd/{unit}: {o}")),
        );
        let copy: String = text
            .lines()
            .map(|line| match line.strip_prefix("ExecStart=") {
                Some(command) => {
                    let args = command.split_once(' ').map_or("", |(_, a)| a);
                    format!("ExecStart={} {args}\n", stand_in.display())
                }
                None => format!("{line}\n"),
            })
            .collect();
        let copied = tmp.join(unit);
        if let Err(e) = std::fs::write(&copied, copy) {
            offences.push(format!("writing {}: {e}", copied.display()));
            continue;
        }
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copied)
            .output();
        match verify {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                offences.push(format!(
                    "deploy/systemd/{unit}: systemd-analyze not found: install the Debian package systemd"
                ));
            }
            Err(e) => offences.push(format!("running systemd-analyze: {e}")),
            Ok(out) => {
                // verify exits 0 on unknown keys and bad values, warning on stderr: any
                // line naming the unit is an offence.
                let stderr = String::from_utf8_lossy(&out.stderr);
                for line in stderr.lines().filter(|l| l.contains(unit)) {
                    offences.push(format!("deploy/systemd/{unit}: systemd-analyze: {line}"));
                }
                if !out.status.success() {
                    offences.push(format!(
                        "deploy/systemd/{unit}: systemd-analyze verify failed: {}",
                        stderr.trim()
                    ));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    offences
}

/// The sandbox directives a unit lacks (the agent's also: no restart after exit code 3).
pub fn missing_directives(unit: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut wanted: Vec<String> = UNIT_SANDBOX.iter().map(|d| (*d).to_owned()).collect();
    let state = unit
        .trim_end_matches(".service")
        .replace("-coordinator", "");
    wanted.push(format!("StateDirectory={state}"));
    if unit == "harambee-agent.service" {
        wanted.push("RestartPreventExitStatus=3".to_owned());
    }
    wanted
        .into_iter()
        .filter(|d| !lines.contains(&d.as_str()))
        .map(|d| format!("lacks {d}"))
        .collect()
}

/// `docker-compose config` parses the compose file; every service is there, images are
/// pinned, no password sits in an environment value, and each agent has its own state.
pub fn compose(root: &Path) -> Vec<String> {
    let mut offences = Vec::new();
    let rendered = match run(
        root,
        "docker-compose",
        &["-f", COMPOSE, "config"],
        "the Debian package docker-compose",
    ) {
        Ok(out) => out,
        Err(offence) => return vec![format!("{COMPOSE}: {offence}")],
    };
    let config: Value = match serde_yaml_ng::from_str(&rendered) {
        Ok(v) => v,
        Err(e) => {
            return vec![format!(
                "{COMPOSE}: docker-compose's output does not parse: {e}"
            )];
        }
    };
    let services = at(&config, &["services"]);
    let mut agent_states = Vec::new();
    for name in COMPOSE_SERVICES {
        let service = at(services, &[name]);
        if service.is_null() {
            offences.push(format!("{COMPOSE}: no service {name}"));
            continue;
        }
        match str_at(service, &["image"]) {
            Some(image) if image_is_pinned(image) => {}
            image => offences.push(format!(
                "{COMPOSE}: service {name}: image {image:?} has no tag, or the tag latest"
            )),
        }
        if name.starts_with("agent-") {
            agent_states.extend(
                seq_at(service, &["volumes"])
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .filter(|v| v.contains(":/var/lib/harambee-agent")),
            );
        }
    }
    for (name, service) in services.as_mapping().into_iter().flatten() {
        let name = name.as_str().unwrap_or("?");
        for (key, value) in at(service, &["environment"])
            .as_mapping()
            .into_iter()
            .flatten()
        {
            let (key, value) = (key.as_str().unwrap_or("?"), value.as_str().unwrap_or(""));
            if let Some(why) = looks_secret(&format!("{key}={value}")).or_else(|| {
                (key.contains("PASSWORD") && !key.ends_with("_FILE")).then_some("a password")
            }) {
                offences.push(format!("{COMPOSE}: service {name}: {key} holds {why}"));
            }
        }
    }
    agent_states.sort();
    agent_states.dedup();
    if agent_states.len() != 3 {
        offences.push(format!(
            "{COMPOSE}: the three agents do not have three state volumes: {agent_states:?}"
        ));
    }
    offences
}

/// The Dockerfiles: pinned base images, a Rust 1.95 builder, a non-root runtime, no key
/// material copied in.
pub fn dockerfiles(root: &Path) -> Vec<String> {
    let mut offences = Vec::new();
    for file in DOCKERFILES {
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            offences.push(format!("{file}: missing"));
            continue;
        };
        let mut user = None;
        let mut n_from = 0;
        for line in text.lines().map(str::trim) {
            if let Some(from) = line.strip_prefix("FROM ") {
                n_from += 1;
                user = None;
                let image = from.split_whitespace().next().unwrap_or("");
                if !image_is_pinned(image) {
                    offences.push(format!("{file}: base image {image} is not pinned"));
                }
            } else if let Some(u) = line.strip_prefix("USER ") {
                user = Some(u.trim().to_owned());
            } else if line.starts_with("COPY ")
                && (line.contains(".key") || line.contains("pki/") || line.contains("ledger"))
            {
                offences.push(format!(
                    "{file}: copies key material into the image: {line}"
                ));
            }
        }
        if !text.contains("FROM rust:1.95-bookworm AS builder") {
            offences.push(format!("{file}: no rust:1.95-bookworm builder stage"));
        }
        match user.as_deref() {
            _ if n_from < 2 => offences.push(format!("{file}: not a multi-stage build")),
            Some(u) if !u.starts_with('0') && !u.starts_with("root") => {}
            u => offences.push(format!(
                "{file}: the runtime stage runs as {u:?}, not a non-root user"
            )),
        }
    }
    offences
}

/// Each serve file (and the Kubernetes ConfigMap's) parses and names only keys `serve`
/// reads (the fields of `ServeFile`), so a typo fails here rather than at start-up.
pub fn serve_files(root: &Path) -> Vec<String> {
    let source = std::fs::read_to_string(root.join(SERVE_FILE_STRUCT)).unwrap_or_default();
    let keys = serve_file_keys(&source);
    if keys.is_empty() {
        return vec![format!("{SERVE_FILE_STRUCT}: no struct ServeFile found")];
    }
    let mut files: Vec<(String, String)> = SERVE_FILES
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(root.join(f)).unwrap_or_default();
            ((*f).to_owned(), text)
        })
        .collect();
    let configmap = "deploy/k8s/base/configmap.yaml";
    if let Ok(text) = std::fs::read_to_string(root.join(configmap))
        && let Ok(value) = serde_yaml_ng::from_str::<Value>(&text)
        && let Some(toml) = str_at(&value, &["data", "coordinator.toml"])
    {
        files.push((configmap.to_owned(), toml.to_owned()));
    } else {
        return vec![format!("{configmap}: no data coordinator.toml")];
    }
    let mut offences = Vec::new();
    for (file, text) in files {
        match text.parse::<toml::Table>() {
            Err(e) => offences.push(format!("{file}: not TOML: {e}")),
            Ok(table) if table.is_empty() => offences.push(format!("{file}: empty or missing")),
            Ok(table) => {
                for key in table.keys().filter(|k| !keys.contains(k)) {
                    offences.push(format!("{file}: `serve` reads no key {key}"));
                }
            }
        }
    }
    offences
}

/// The field names of `pub struct ServeFile { … }` in the coordinator's CLI source.
fn serve_file_keys(source: &str) -> Vec<String> {
    let Some(start) = source.find("pub struct ServeFile {") else {
        return Vec::new();
    };
    source[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('}'))
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect()
}

/// Runs a tool from the repository root and returns its stdout, or an offence: naming what
/// to install when it is missing, with its stderr when it fails.
fn run(root: &Path, tool: &str, args: &[&str], install: &str) -> Result<String, String> {
    match Command::new(tool).args(args).current_dir(root).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{tool} not found: install {install}"))
        }
        Err(e) => Err(format!("running {tool}: {e}")),
        Ok(out) if !out.status.success() => Err(format!(
            "{tool} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
    }
}

/// The non-empty documents of a multi-document YAML stream.
fn documents(text: &str) -> Result<Vec<Value>, serde_yaml_ng::Error> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = <Value as serde::Deserialize>::deserialize(doc)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

static NULL: Value = Value::Null;

fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .unwrap_or(&NULL)
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).as_str()
}

fn seq_at<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path).as_sequence().map_or(&[], |s| s.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tidy::workspace_root;

    /// The whole check, as CI runs it: the tools must be installed (`.ci/run` does it).
    #[test]
    fn deploy_files_pass_their_checks() {
        let offences = all(&workspace_root());
        assert!(offences.is_empty(), "\n{}", offences.join("\n"));
    }

    /// The checks see what they are for.
    #[test]
    fn the_checks_see_offences() {
        let bad = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data:
  a.toml: |
    database_url = "postgres://user:pass@db/x"
  b: "-----BEGIN PRIVATE KEY-----"
---
apiVersion: v1
kind: Secret
metadata: {name: s}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: p}
spec: {selector: {matchLabels: {app: other}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: n}
spec: {podSelector: {matchLabels: {app: elsewhere}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec:
      containers:
        - name: c
          image: harambee-coordinator:latest
          ports: [{name: ops, containerPort: 9464}]
          livenessProbe: {httpGet: {path: /healthz, port: 8080}}
          readinessProbe: {httpGet: {path: /readyz, port: ops}}
      volumes:
        - name: k
          secret: {secretName: k, defaultMode: 420}  # 0644, as kustomize renders it
"#;
        let objects = documents(bad).unwrap();
        let offences = check_manifests(&objects, None).join("\n");
        for expected in [
            "no Service",
            "ConfigMap c: data a.toml holds a URL with a password",
            "ConfigMap c: data b holds PEM armour",
            "Secret s: Secrets are created by the operator",
            "PodDisruptionBudget p: its selector matches no Deployment's pods",
            "NetworkPolicy n: its selector matches no Deployment's pods",
            "image harambee-coordinator:latest",
            "runAsNonRoot is not true",
            "readOnlyRootFilesystem is not true",
            "allowPrivilegeEscalation is not false",
            "capabilities.drop does not hold ALL",
            "seccompProfile is not RuntimeDefault",
            "no resources.limits.memory",
            "livenessProbe is not an httpGet of /healthz on the ops port",
            "secret volume k: defaultMode 0644",
        ] {
            assert!(
                offences.contains(expected),
                "{expected:?} not in:\n{offences}"
            );
        }
        assert!(!offences.contains("readinessProbe"), "{offences}");

        assert!(image_is_pinned("registry:5000/harambee-agent:0.1.0"));
        assert!(image_is_pinned("busybox@sha256:abc"));
        assert!(!image_is_pinned("registry:5000/harambee-agent"));
        assert!(!image_is_pinned("busybox:latest"));
        assert_eq!(looks_secret("postgres://harambee@db/h"), None);
        assert!(looks_secret("POSTGRES_PASSWORD=x").is_some());

        let unit = "[Service]\nProtectSystem=strict\nUser=harambee\n";
        let missing = missing_directives("harambee-agent.service", unit).join("\n");
        assert!(
            missing.contains("lacks RestartPreventExitStatus=3"),
            "{missing}"
        );
        assert!(
            missing.contains("lacks StateDirectory=harambee-agent"),
            "{missing}"
        );
        assert!(!missing.contains("ProtectSystem"), "{missing}");
        assert!(
            missing_directives("harambee-coordinator.service", "")
                .contains(&"lacks StateDirectory=harambee".to_owned())
        );

        let keys = serve_file_keys(
            "pub struct ServeFile {\n    pub listen: Option<X>,\n    /// doc\n    pub pki: Option<P>,\n}\n",
        );
        assert_eq!(keys, ["listen", "pki"]);
    }
}
