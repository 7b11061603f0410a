//! The Helm chart `deploy/helm/etcdsnap`: it lints, renders what `deploy/` describes (the same CRD,
//! the same RBAC rules, a DaemonSet whose flags the agent has and whose paths are mounted), refuses
//! bad values, and the real kube-apiserver accepts every object it renders, for each preset.
//! helm and kubectl are the pinned test binaries (`make testbins`).

use etcdsnap_api::consts::{PRIVATE_DIR, SYSTEM_NAMESPACE};

/// K3s's legacy ConfigMap (the kubeadm preset writes K3s's names).
const LEGACY_CONFIGMAP: &str = "k3s-etcd-snapshots";
use etcdsnap_storage::store::s3::settings::S3Key;
use serde::Deserialize;
use serde_norway::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use testenv::{Etcd, KubeApiServer};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Error = Box<dyn std::error::Error>;

const PRESETS: [&str; 3] = ["kubeadm", "k3s", "rke2"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart() -> PathBuf {
    repo().join("deploy/helm/etcdsnap")
}

/// Runs helm with its cache, config and data in a scratch directory (nothing from `$HOME`).
fn helm(args: &[&str]) -> Result<Output, Error> {
    let home = tempfile::tempdir()?;
    let out = Command::new(testenv::testbin("helm")?)
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .stdin(Stdio::null())
        .output()?;
    Ok(out)
}

fn set_args(sets: &[&str]) -> Vec<String> {
    sets.iter().flat_map(|s| ["--set".to_string(), s.to_string()]).collect()
}

/// `helm template` of the chart with `sets`: its output, or helm's error.
fn template_text(sets: &[&str]) -> Result<String, String> {
    let chart = chart().display().to_string();
    let mut args = vec!["template", "etcdsnap", chart.as_str(), "--namespace", SYSTEM_NAMESPACE];
    let sets = set_args(sets);
    args.extend(sets.iter().map(String::as_str));
    let out = helm(&args).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn parse_docs(text: &str) -> Result<Vec<Value>, Error> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The chart's objects with `sets`.
fn render(sets: &[&str]) -> Result<Vec<Value>, Error> {
    let text = template_text(sets).map_err(|e| format!("helm template {sets:?}: {e}"))?;
    parse_docs(&text)
}

fn deploy_docs(file: &str) -> Result<Vec<Value>, Error> {
    parse_docs(&std::fs::read_to_string(repo().join("deploy").join(file))?)
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn kind_name(v: &Value) -> (String, String, String) {
    (
        str_of(&v["kind"]).to_string(),
        str_of(&v["metadata"]["namespace"]).to_string(),
        str_of(&v["metadata"]["name"]).to_string(),
    )
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objs.iter().find(|o| str_of(&o["kind"]) == kind && str_of(&o["metadata"]["name"]) == name)
}

fn daemonset(objs: &[Value]) -> &Value {
    find(objs, "DaemonSet", "etcdsnap-agent").expect("no DaemonSet etcdsnap-agent")
}

fn agent_container(objs: &[Value]) -> &Value {
    let containers = daemonset(objs)["spec"]["template"]["spec"]["containers"].as_sequence().expect("containers");
    containers.iter().find(|c| str_of(&c["name"]) == "agent").expect("no container agent")
}

fn agent_args(objs: &[Value]) -> Vec<String> {
    let args = agent_container(objs)["args"].as_sequence().expect("args");
    args.iter().map(|a| a.as_str().expect("args are strings").to_string()).collect()
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix))
}

/// Every long flag `etcdsnap agent --help` names, aliases included.
fn agent_flags() -> &'static BTreeSet<String> {
    static FLAGS: OnceLock<BTreeSet<String>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_etcdsnap")).args(["agent", "--help"]).output().unwrap();
        assert!(out.status.success(), "etcdsnap agent --help: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let flags: BTreeSet<String> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_string)
            .collect();
        assert!(flags.contains("--s3-config-secret") && flags.contains("--data-dir"), "{flags:?}");
        flags
    })
}

/// The chart's option combinations the tests render: each preset alone, each with everything on,
/// and one with names other than the defaults.
fn cases() -> Vec<(String, Vec<&'static str>)> {
    let mut cases = Vec::new();
    for (preset, p) in PRESETS.into_iter().zip(["preset=kubeadm", "preset=k3s", "preset=rke2"]) {
        cases.push((format!("{preset}, defaults"), vec![p]));
        cases.push((
            format!("{preset}, everything on"),
            vec![
                p,
                "s3.enabled=true",
                "s3.create.bucket=snapshots",
                "s3.create.endpoint=s3.example.com:9000",
                "s3.create.region=eu-west-1",
                "s3.create.folder=prod",
                "s3.create.accessKey=AKEXAMPLE",
                "s3.create.secretKey=SKEXAMPLE",
                "s3.create.insecure=true",
                "s3.create.skipSslVerify=false",
                "s3.create.retention=7",
                "s3.create.timeout=2m",
                "s3.create.endpointCAName=s3-endpoint-ca",
                "s3Retention=10",
                "keep.daily=7",
                "keep.within=2d",
                "serviceMonitor.enabled=true",
                "serviceMonitor.labels.release=prometheus",
                "rbac.nodeAnnotations=true",
                "compression=zstd",
                "schedule=*/30 * * * *",
                "drills.etcd=/usr/local/bin/etcd",
                "drills.scratchSizeLimit=4Gi",
                "token.existingSecret=server-token",
                "extraArgs[0]=--zstd-level=9",
                "priorityClassName=system-cluster-critical",
                "podAnnotations.team=platform",
                "deltas.enabled=true",
                "deltas.interval=5s",
                "deltas.maxBytes=4MiB",
                "sealing.recipients.existingSecret=etcdsnap-recipients",
                "sealing.signingKey.existingSecret=etcdsnap-signing",
                "sealing.identity.existingSecret=etcdsnap-identity",
                "sealing.verifyKey.existingSecret=etcdsnap-verify",
                "sealing.kitFiles[0]=/etc/kubernetes/pki/etcd",
                "sealing.encryptionConfig=/etc/kubernetes/encryption-config.yaml",
            ],
        ));
    }
    cases.push((
        "k3s, other names and data directory".into(),
        vec![
            "preset=k3s",
            "dataDir=/srv/k3s",
            "s3.enabled=true",
            "s3.existingSecret=my-s3",
            "extraMetadataConfigMap=my-extra-metadata",
            "heartbeatNamespace.create=false",
            "crds.install=false",
            "nodeSelector.etcdsnap=yes",
        ],
    ));
    cases
}

fn preset_of(sets: &[&str]) -> &'static str {
    let p = sets.iter().find_map(|s| s.strip_prefix("preset=")).unwrap_or("kubeadm");
    PRESETS.into_iter().find(|x| *x == p).expect("a preset")
}

fn has(sets: &[&str], set: &str) -> bool {
    sets.contains(&set)
}

#[test]
fn helm_lint_passes_for_every_preset_and_option() -> TestResult {
    let chart = chart().display().to_string();
    for (name, sets) in cases() {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        let sets = set_args(&sets);
        args.extend(sets.iter().map(String::as_str));
        let out = helm(&args)?;
        assert!(
            out.status.success(),
            "helm lint ({name}) failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What a preset's agent reads and writes on the host.
struct HostPaths {
    tls: [String; 3],
    token: Option<String>,
    data_dir: String,
    /// Directories the agent writes.
    writable: Vec<String>,
    node_selector: (&'static str, &'static str),
}

fn host_paths(preset: &str, data_dir: Option<&str>, deltas: bool) -> HostPaths {
    match preset {
        "kubeadm" => {
            let dd = data_dir.unwrap_or("/var/lib/etcdsnap").to_string();
            HostPaths {
                tls: [
                    "/etc/kubernetes/pki/etcd/ca.crt".into(),
                    "/etc/kubernetes/pki/etcd/healthcheck-client.crt".into(),
                    "/etc/kubernetes/pki/etcd/healthcheck-client.key".into(),
                ],
                token: None,
                writable: vec![dd.clone()],
                data_dir: dd,
                node_selector: ("node-role.kubernetes.io/control-plane", ""),
            }
        }
        distro => {
            let dd = data_dir.map(str::to_string).unwrap_or(format!("/var/lib/rancher/{distro}"));
            HostPaths {
                tls: [
                    format!("{dd}/server/tls/etcd/server-ca.crt"),
                    format!("{dd}/server/tls/etcd/client.crt"),
                    format!("{dd}/server/tls/etcd/client.key"),
                ],
                token: Some(format!("{dd}/server/token")),
                writable: [
                    format!("{dd}/server/db/snapshots"),
                    format!("{dd}/server/db/.metadata"),
                    format!("{dd}/server/db/{PRIVATE_DIR}"),
                ]
                .into_iter()
                // Delta chains live beside the snapshot directory.
                .chain(deltas.then(|| format!("{dd}/server/db/.etcdsnap-deltas")))
                .collect(),
                data_dir: dd,
                node_selector: ("node-role.kubernetes.io/etcd", "true"),
            }
        }
    }
}

struct Mount {
    path: String,
    read_only: bool,
    /// The hostPath volume's path, if the volume is one.
    host_path: Option<String>,
    volume: Value,
}

fn mounts(objs: &[Value]) -> Vec<Mount> {
    let pod = &daemonset(objs)["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let container = agent_container(objs);
    let mut out = Vec::new();
    for m in container["volumeMounts"].as_sequence().expect("volumeMounts") {
        let name = str_of(&m["name"]);
        let volume = volumes.iter().find(|v| str_of(&v["name"]) == name).unwrap_or_else(|| panic!("no volume {name}"));
        out.push(Mount {
            path: str_of(&m["mountPath"]).to_string(),
            read_only: m["readOnly"].as_bool().unwrap_or(false),
            host_path: volume["hostPath"]["path"].as_str().map(str::to_string),
            volume: volume.clone(),
        });
    }
    assert_eq!(out.len(), volumes.len(), "a volume is not mounted: {volumes:?}");
    out
}

/// The mount `path` is in, if any (component-wise: /a/bc is not in /a/b).
fn mount_of<'a>(mounts: &'a [Mount], path: &str) -> Option<&'a Mount> {
    mounts.iter().filter(|m| Path::new(path).starts_with(&m.path)).max_by_key(|m| m.path.len())
}

fn check_daemonset(case: &str, sets: &[&str], objs: &[Value]) {
    let preset = preset_of(sets);
    let data_dir = sets.iter().find_map(|s| s.strip_prefix("dataDir="));
    let expected = host_paths(preset, data_dir, has(sets, "deltas.enabled=true"));
    let args = agent_args(objs);
    assert_eq!(args.first().map(String::as_str), Some("agent"), "{case}: {args:?}");

    // Every flag is one the agent has.
    for arg in &args[1..] {
        assert!(arg.starts_with("--"), "{case}: not a flag: {arg}");
        let name = arg.split('=').next().unwrap_or_default();
        assert!(agent_flags().contains(name), "{case}: `etcdsnap agent` has no flag {name}");
    }
    let names: Vec<&str> = args[1..].iter().map(|a| a.split('=').next().unwrap_or_default()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "{case}: a flag is repeated: {args:?}");

    // The preset's etcd, certificates, token and directories.
    assert_eq!(flag(&args, "endpoints"), Some("https://127.0.0.1:2379"), "{case}");
    assert_eq!(flag(&args, "cacert"), Some(expected.tls[0].as_str()), "{case}");
    assert_eq!(flag(&args, "cert"), Some(expected.tls[1].as_str()), "{case}");
    assert_eq!(flag(&args, "key"), Some(expected.tls[2].as_str()), "{case}");
    assert_eq!(flag(&args, "data-dir"), Some(expected.data_dir.as_str()), "{case}");
    let token_secret = has(sets, "token.existingSecret=server-token");
    match (&expected.token, token_secret) {
        (_, true) => assert_eq!(flag(&args, "token-file"), Some("/etc/etcdsnap/token/token"), "{case}"),
        (Some(file), false) => assert_eq!(flag(&args, "token-file"), Some(file.as_str()), "{case}"),
        (None, false) => assert_eq!(flag(&args, "token-file"), None, "{case}: kubeadm has no server token"),
    }
    assert!(flag(&args, "metrics-addr").is_some_and(|a| a.starts_with("0.0.0.0:")), "{case}");
    assert_eq!(flag(&args, "log-format"), Some("json"), "{case}");

    // Each path the agent reads or writes is mounted, at the host's own path.
    let mounts = mounts(objs);
    let mut used: Vec<(String, bool)> = expected.tls.iter().map(|p| (p.clone(), false)).collect();
    if let Some(token) = flag(&args, "token-file") {
        used.push((token.to_string(), false));
    }
    for sealing in ["encrypt-to-file", "sign-key", "decrypt-identity", "verify-key", "kit-file", "encryption-config"] {
        used.extend(flag(&args, sealing).map(|p| (p.to_string(), false)));
    }
    used.extend(expected.writable.iter().map(|p| (p.clone(), true)));
    for (path, writes) in &used {
        let m = mount_of(&mounts, path).unwrap_or_else(|| panic!("{case}: {path} is not mounted"));
        if *writes {
            assert!(!m.read_only, "{case}: {path} is mounted read-only");
            assert_eq!(m.host_path.as_deref(), Some(path.as_str()), "{case}: {path} is not its host directory");
            assert_eq!(str_of(&m.volume["hostPath"]["type"]), "DirectoryOrCreate", "{case}: {path}");
        } else {
            assert!(m.read_only, "{case}: {path} is mounted writable");
        }
    }
    for m in &mounts {
        if let Some(host) = &m.host_path {
            assert_eq!(host, &m.path, "{case}: host path {host} mounted elsewhere");
            assert!(used.iter().any(|(p, _)| p == host), "{case}: hostPath {host} is not one the agent uses");
        } else {
            let source = m.volume.as_mapping().map(|v| v.keys().filter_map(Value::as_str).collect::<Vec<_>>());
            // 0400 in the chart: YAML 1.1 (the API server's) reads it as octal, YAML 1.2 as decimal.
            let secret = |v: &Value| {
                let mode = &v["secret"]["defaultMode"];
                matches!(mode.as_u64(), Some(0o400 | 400)) || mode.as_str() == Some("0400")
            };
            let ok = (m.path == "/tmp" && !m.volume["emptyDir"].is_null())
                || (token_secret && m.path == "/etc/etcdsnap/token" && !m.volume["secret"].is_null())
                || (m.path.starts_with("/etc/etcdsnap/sealing/") && secret(&m.volume));
            assert!(ok, "{case}: unexpected volume at {}: {source:?}", m.path);
        }
    }
    // On K3s/RKE2, never etcd's own data beside the snapshots.
    if preset != "kubeadm" {
        let etcd_data = format!("{}/server/db/etcd/member", expected.data_dir);
        assert!(mount_of(&mounts, &etcd_data).is_none(), "{case}: etcd's data directory is mounted");
    }

    let pod = &daemonset(objs)["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true), "{case}");
    let selector = pod["nodeSelector"].as_mapping().expect("nodeSelector");
    if has(sets, "nodeSelector.etcdsnap=yes") {
        assert_eq!(selector.len(), 1, "{case}: {selector:?}");
        assert_eq!(str_of(&pod["nodeSelector"]["etcdsnap"]), "yes", "{case}");
    } else {
        assert_eq!(selector.len(), 1, "{case}: {selector:?}");
        assert_eq!(pod["nodeSelector"][expected.node_selector.0].as_str(), Some(expected.node_selector.1), "{case}");
    }
    let env = agent_container(objs)["env"].as_sequence().expect("env");
    let node_name = env.iter().find(|e| str_of(&e["name"]) == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(str_of(&node_name["valueFrom"]["fieldRef"]["fieldPath"]), "spec.nodeName", "{case}");
    let probes = agent_container(objs);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(str_of(&probes[probe]["httpGet"]["port"]), "metrics", "{case}: {probe}");
    }
    let security = &agent_container(objs)["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true), "{case}");
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false), "{case}");

    // Options that change the flags.
    let everything = has(sets, "serviceMonitor.enabled=true");
    assert_eq!(args.iter().any(|a| a == "--annotate-node"), everything, "{case}");
    if everything {
        assert_eq!(flag(&args, "compress"), Some("zstd"), "{case}");
        assert_eq!(flag(&args, "schedule"), Some("*/30 * * * *"), "{case}");
        assert_eq!(flag(&args, "s3-retention"), Some("10"), "{case}");
        assert_eq!((flag(&args, "keep-daily"), flag(&args, "keep-within")), (Some("7"), Some("2d")), "{case}");
        assert_eq!(flag(&args, "keep-weekly"), None, "{case}: a rule left null is not passed");
        assert_eq!(flag(&args, "drill-etcd"), Some("/usr/local/bin/etcd"), "{case}");
        assert_eq!(flag(&args, "zstd-level"), Some("9"), "{case}: extraArgs");
        assert!(args.iter().any(|a| a == "--deltas"), "{case}");
        // Sealing: each key from its Secret, the kit's files from the host.
        let sealing = [
            ("encrypt-to-file", "/etc/etcdsnap/sealing/recipients/recipients.txt"),
            ("sign-key", "/etc/etcdsnap/sealing/signing-key/sign.key"),
            ("decrypt-identity", "/etc/etcdsnap/sealing/identity/identity.txt"),
            ("verify-key", "/etc/etcdsnap/sealing/verify-key/sign.pub"),
            ("kit-file", "/etc/kubernetes/pki/etcd"),
            ("encryption-config", "/etc/kubernetes/encryption-config.yaml"),
        ];
        for (name, value) in sealing {
            assert_eq!(flag(&args, name), Some(value), "{case}: --{name}");
        }
        assert_eq!(
            (flag(&args, "delta-interval"), flag(&args, "delta-max-bytes")),
            (Some("5s"), Some("4MiB")),
            "{case}"
        );
    } else {
        assert_eq!(flag(&args, "compress"), Some("none"), "{case}");
        assert_eq!(flag(&args, "schedule"), Some("0 */12 * * *"), "{case}");
        assert_eq!(flag(&args, "s3-retention"), None, "{case}");
        assert!(!args.iter().any(|a| a.starts_with("--keep-")), "{case}: no age rule by default");
        assert!(!args.iter().any(|a| a.starts_with("--delta")), "{case}: deltas are off by default");
        for name in ["encrypt-to-file", "sign-key", "decrypt-identity", "verify-key", "kit-file"] {
            assert_eq!(flag(&args, name), None, "{case}: sealing is off by default");
        }
    }
    let s3 = has(sets, "s3.enabled=true");
    assert_eq!(args.iter().any(|a| a == "--s3"), s3, "{case}");
    let secret = if has(sets, "s3.existingSecret=my-s3") { "my-s3" } else { "etcdsnap-s3-config" };
    assert_eq!(flag(&args, "s3-config-secret"), s3.then_some(secret), "{case}");
    // The rke2 preset writes RKE2's names and reads the ConfigMap Rancher writes on RKE2.
    let program = program_of(sets);
    assert_eq!(flag(&args, "program"), Some(program), "{case}");
    let extra = match has(sets, "extraMetadataConfigMap=my-extra-metadata") {
        true => "my-extra-metadata".to_string(),
        false => format!("{program}-etcd-snapshot-extra-metadata"),
    };
    assert_eq!(flag(&args, "extra-metadata-configmap"), Some(extra.as_str()), "{case}");
}

/// The program whose names a preset writes: RKE2's on rke2, K3s's otherwise.
fn program_of(sets: &[&str]) -> &'static str {
    if preset_of(sets) == "rke2" { "rke2" } else { "k3s" }
}

#[test]
fn rendered_agent_has_the_presets_paths_and_only_real_flags() -> TestResult {
    for (case, sets) in cases() {
        let objs = render(&sets)?;
        check_daemonset(&case, &sets, &objs);
        for obj in &objs {
            let (kind, namespace, name) = kind_name(obj);
            let cluster_scoped = ["Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"];
            if !cluster_scoped.contains(&kind.as_str()) {
                assert!(
                    [SYSTEM_NAMESPACE, "etcdsnap", "default"].contains(&namespace.as_str()),
                    "{case}: {kind} {name} in namespace {namespace:?}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn the_crd_is_deploys_with_the_keep_policy() -> TestResult {
    let deploy = std::fs::read(repo().join("deploy/crd.yaml"))?;
    let copy = std::fs::read(chart().join("files/crd.yaml"))?;
    assert!(deploy == copy, "deploy/helm/etcdsnap/files/crd.yaml differs from deploy/crd.yaml: copy it again");
    let expected = deploy_docs("crd.yaml")?.remove(0);
    for preset in PRESETS {
        let objs = render(&[&format!("preset={preset}")])?;
        let crds: Vec<&Value> = objs.iter().filter(|o| str_of(&o["kind"]) == "CustomResourceDefinition").collect();
        assert_eq!(crds.len(), 1, "{preset}");
        let mut crd = crds[0].clone();
        let annotations = crd["metadata"]["annotations"].as_mapping_mut().expect("annotations");
        let keep = annotations.remove("helm.sh/resource-policy");
        assert_eq!(keep.as_ref().and_then(Value::as_str), Some("keep"), "{preset}");
        assert_eq!(crd, expected, "{preset}: the rendered CRD is not deploy/crd.yaml's");
    }
    let objs = render(&["crds.install=false"])?;
    assert!(objs.iter().all(|o| str_of(&o["kind"]) != "CustomResourceDefinition"));
    Ok(())
}

/// deploy/rbac.yaml's objects (and rbac-node-annotations.yaml's), with the names the values give:
/// deploy/ names both programs' ConfigMaps, the chart only its preset's program's.
fn expected_rbac(sets: &[&str]) -> Result<Vec<Value>, Error> {
    let program = program_of(sets);
    let other = if program == "rke2" { "k3s" } else { "rke2" };
    let mut docs = deploy_docs("rbac.yaml")?;
    docs.retain(|d| kind_name(d) != ("ConfigMap".into(), SYSTEM_NAMESPACE.into(), format!("{other}-etcd-snapshots")));
    for doc in &mut docs {
        for rule in doc["rules"].as_sequence_mut().into_iter().flatten() {
            if let Some(names) = rule.get_mut("resourceNames").and_then(Value::as_sequence_mut) {
                names.retain(|n| !str_of(n).starts_with(&format!("{other}-etcd-snapshot")));
            }
        }
    }
    if has(sets, "rbac.nodeAnnotations=true") {
        docs.extend(deploy_docs("rbac-node-annotations.yaml")?);
    }
    let mut text = serde_norway::to_string(&docs)?;
    if has(sets, "s3.existingSecret=my-s3") {
        text = text.replace("etcdsnap-s3-config", "my-s3");
    }
    if has(sets, "extraMetadataConfigMap=my-extra-metadata") {
        text = text.replace(&format!("{program}-etcd-snapshot-extra-metadata"), "my-extra-metadata");
    }
    let mut docs: Vec<Value> = serde_norway::from_str(&text)?;
    if has(sets, "s3.create.endpointCAName=s3-endpoint-ca") {
        // The Secret names a CA ConfigMap (etcd-s3-endpoint-ca-name): the agent may read it too.
        let role =
            docs.iter_mut().find(|d| kind_name(d) == ("Role".into(), SYSTEM_NAMESPACE.into(), "etcdsnap".into()));
        let rules = role.expect("Role etcdsnap")["rules"].as_sequence_mut().expect("rules");
        let read = rules.iter_mut().find(|r| r["verbs"] == serde_norway::from_str::<Value>("[get]").unwrap());
        let read = read.expect("the configmaps get rule");
        assert_eq!(str_of(&read["resources"][0]), "configmaps");
        read["resourceNames"].as_sequence_mut().expect("resourceNames").push("s3-endpoint-ca".into());
    }
    Ok(docs)
}

#[test]
fn rbac_is_deploys_with_the_values_names() -> TestResult {
    for (case, sets) in cases() {
        let objs = render(&sets)?;
        let expected = expected_rbac(&sets)?;
        for want in &expected {
            let (kind, namespace, name) = kind_name(want);
            let rendered = objs.iter().find(|o| kind_name(o) == (kind.clone(), namespace.clone(), name.clone()));
            let creates = match (kind.as_str(), name.as_str()) {
                ("Namespace", _) => !has(&sets, "heartbeatNamespace.create=false"),
                // K3s and RKE2 servers own the legacy ConfigMap: only kubeadm's is the chart's.
                ("ConfigMap", LEGACY_CONFIGMAP) => preset_of(&sets) == "kubeadm",
                ("ConfigMap", n) if n.ends_with("-etcd-snapshots") => false,
                _ => true,
            };
            let Some(got) = rendered else {
                assert!(!creates, "{case}: {kind} {namespace}/{name} is not rendered");
                continue;
            };
            assert!(creates, "{case}: {kind} {namespace}/{name} is rendered");
            for field in ["rules", "roleRef", "subjects", "data"] {
                assert_eq!(got[field], want[field], "{case}: {kind} {namespace}/{name}: {field} differs from deploy/");
            }
        }
        let rbac_kinds = ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ServiceAccount"];
        for got in objs.iter().filter(|o| rbac_kinds.contains(&str_of(&o["kind"]))) {
            assert!(
                expected.iter().any(|w| kind_name(w) == kind_name(got)),
                "{case}: {:?} is not in deploy/rbac*.yaml",
                kind_name(got)
            );
        }
        let lease = find(&objs, "Lease", "etcdsnap-leader").expect("Lease");
        assert!(lease["spec"].is_null(), "{case}: the leader Lease is the agent's to fill");
    }
    Ok(())
}

#[test]
fn the_s3_secret_has_k3s_keys_and_only_when_the_chart_creates_it() -> TestResult {
    let k3s_keys: BTreeSet<&str> = S3Key::ALL.into_iter().map(S3Key::k3s_name).collect();
    let objs = render(&cases()[1].1)?;
    let secret = find(&objs, "Secret", "etcdsnap-s3-config").expect("the S3 config Secret");
    assert_eq!(str_of(&secret["metadata"]["namespace"]), SYSTEM_NAMESPACE);
    let data = secret["stringData"].as_mapping().expect("stringData");
    for key in data.keys() {
        assert!(k3s_keys.contains(str_of(key)), "{key:?} is not one of K3s's etcd-s3-* keys");
    }
    let get = |k: &str| str_of(&secret["stringData"][k]).to_string();
    assert_eq!(get("etcd-s3-bucket"), "snapshots");
    assert_eq!(get("etcd-s3-endpoint"), "s3.example.com:9000");
    assert_eq!(get("etcd-s3-region"), "eu-west-1");
    assert_eq!(get("etcd-s3-folder"), "prod");
    assert_eq!(get("etcd-s3-access-key"), "AKEXAMPLE");
    assert_eq!(get("etcd-s3-secret-key"), "SKEXAMPLE");
    assert_eq!(get("etcd-s3-insecure"), "true");
    assert_eq!(get("etcd-s3-skip-ssl-verify"), "false");
    assert_eq!(get("etcd-s3-retention"), "7");
    assert_eq!(get("etcd-s3-timeout"), "2m");
    assert_eq!(get("etcd-s3-endpoint-ca-name"), "s3-endpoint-ca");
    assert_eq!(data.len(), 11, "{data:?}");

    for sets in [&cases()[0].1, &cases()[6].1] {
        let objs = render(sets)?;
        assert!(objs.iter().all(|o| str_of(&o["kind"]) != "Secret"), "{sets:?}");
    }
    Ok(())
}

#[test]
fn the_service_monitor_scrapes_every_node() -> TestResult {
    let objs = render(&cases()[3].1)?;
    let sm = find(&objs, "ServiceMonitor", "etcdsnap").expect("ServiceMonitor");
    let service = find(&objs, "Service", "etcdsnap-metrics").expect("Service");
    assert_eq!(str_of(&service["spec"]["clusterIP"]), "None");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().expect("matchLabels") {
        assert_eq!(&service["metadata"]["labels"][str_of(k)], v, "the ServiceMonitor does not select the Service");
    }
    let pod_labels = &daemonset(&objs)["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(&pod_labels[str_of(k)], v, "the Service does not select the agents");
    }
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(str_of(&endpoint["port"]), "metrics");
    assert_eq!(str_of(&sm["metadata"]["labels"]["release"]), "prometheus");
    let relabel = &endpoint["relabelings"][0];
    assert_eq!(str_of(&relabel["sourceLabels"][0]), "__meta_kubernetes_pod_node_name");
    assert_eq!(str_of(&relabel["targetLabel"]), "node");

    let objs = render(&[])?;
    assert!(
        find(&objs, "ServiceMonitor", "etcdsnap").is_none() && find(&objs, "Service", "etcdsnap-metrics").is_none()
    );
    Ok(())
}

#[test]
fn bad_values_fail_with_a_message_naming_them() -> TestResult {
    let bad: [(&[&str], &str); 6] = [
        (&["presett=k3s"], "additional properties 'presett' not allowed"),
        (&["s3.enabeld=true"], "additional properties 'enabeld' not allowed"),
        (&["preset=k8s"], "/preset"),
        (&["compression=gzip"], "/compression"),
        (&["s3.existingSecret=mine", "s3.create.bucket=b"], "s3.existingSecret and s3.create are mutually exclusive"),
        (&["s3.enabled=true"], "s3.enabled needs its settings"),
    ];
    for (sets, message) in bad {
        match template_text(sets) {
            Ok(_) => panic!("helm template {sets:?} succeeded"),
            Err(e) => assert!(e.contains(message), "helm template {sets:?}: {message:?} not in {e}"),
        }
    }
    Ok(())
}

fn kubectl(api: &KubeApiServer, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let mut child = Command::new(testenv::testbin("kubectl")?)
        .args(args)
        .arg("--kubeconfig")
        .arg(api.kubeconfig_path())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin").write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn helm_on(api: &KubeApiServer, args: &[&str]) -> Result<String, Error> {
    let kubeconfig = api.kubeconfig_path().display().to_string();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", kubeconfig.as_str(), "--namespace", SYSTEM_NAMESPACE]);
    let out = helm(&all)?;
    if !out.status.success() {
        return Err(format!("helm {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).display().to_string()
}

fn wait_established(api: &KubeApiServer, crd: &str) -> TestResult {
    kubectl(api, &["wait", "--for=condition=Established", "--timeout=60s", &format!("crd/{crd}")], None)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_accepts_every_rendered_object() -> TestResult {
    let etcd = Etcd::single().await?;
    let api = KubeApiServer::start(&etcd).await?;
    let crd_text = template_text(&["crds.install=true"])?;
    let crd: Vec<Value> =
        parse_docs(&crd_text)?.into_iter().filter(|o| str_of(&o["kind"]) == "CustomResourceDefinition").collect();
    kubectl(&api, &["apply", "-f", "-"], Some(&serde_norway::to_string(&crd[0])?))?;
    kubectl(&api, &["apply", "-f", &fixture("servicemonitor-crd.yaml")], None)?;
    wait_established(&api, "etcdsnapshotfiles.k3s.cattle.io")?;
    wait_established(&api, "servicemonitors.monitoring.coreos.com")?;
    // A dry-run create of a Namespace does not make it exist for the objects in it.
    kubectl(&api, &["create", "namespace", "etcdsnap"], None)?;

    for (case, sets) in cases() {
        let text = template_text(&sets)?;
        let objects = parse_docs(&text)?.len();
        let out = kubectl(&api, &["apply", "--dry-run=server", "-f", "-"], Some(&text))
            .map_err(|e| format!("{case}: {e}"))?;
        let accepted = out.lines().filter(|l| l.contains("(server dry run)")).count();
        assert_eq!(accepted, objects, "{case}: {out}");
    }
    Ok(())
}

/// A real install: on K3s the chart leaves the server's own CRD and legacy ConfigMap alone, and
/// uninstalling keeps the snapshot index and the legacy ConfigMap (kubeadm).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_leaves_k3s_objects_alone_and_uninstall_keeps_the_index() -> TestResult {
    let etcd = Etcd::single().await?;
    let api = KubeApiServer::start(&etcd).await?;
    let chart = chart().display().to_string();
    // As on a K3s server: its CRD and ConfigMap exist, not Helm's.
    kubectl(&api, &["apply", "-f", &repo().join("deploy/crd.yaml").display().to_string()], None)?;
    wait_established(&api, "etcdsnapshotfiles.k3s.cattle.io")?;
    kubectl(&api, &["-n", SYSTEM_NAMESPACE, "create", "configmap", LEGACY_CONFIGMAP, "--from-literal=k=v"], None)?;
    // No controller-manager: a deleted namespace would never finish terminating.
    kubectl(&api, &["create", "namespace", "etcdsnap"], None)?;
    let common = ["--set", "heartbeatNamespace.create=false"];

    let mut install = vec!["install", "etcdsnap", chart.as_str(), "--set", "preset=k3s"];
    install.extend(common);
    helm_on(&api, &install)?;
    let crd: Value = serde_norway::from_str(&kubectl(
        &api,
        &["get", "crd", "etcdsnapshotfiles.k3s.cattle.io", "-o", "yaml"],
        None,
    )?)?;
    assert!(crd["metadata"]["annotations"]["meta.helm.sh/release-name"].is_null(), "Helm took K3s's CRD: {crd:?}");
    let cm = kubectl(&api, &["-n", SYSTEM_NAMESPACE, "get", "configmap", LEGACY_CONFIGMAP, "-o", "yaml"], None)?;
    assert!(!cm.contains("meta.helm.sh"), "Helm took K3s's ConfigMap: {cm}");
    kubectl(&api, &["-n", SYSTEM_NAMESPACE, "get", "daemonset/etcdsnap-agent", "lease/etcdsnap-leader"], None)?;
    helm_on(&api, &["uninstall", "etcdsnap"])?;
    kubectl(&api, &["get", "crd", "etcdsnapshotfiles.k3s.cattle.io"], None)?;
    kubectl(&api, &["-n", SYSTEM_NAMESPACE, "get", "configmap", LEGACY_CONFIGMAP], None)?;

    // kubeadm, on a cluster without them: the chart creates both, and keeps both on uninstall.
    kubectl(&api, &["delete", "crd", "etcdsnapshotfiles.k3s.cattle.io", "--wait=true"], None)?;
    kubectl(&api, &["-n", SYSTEM_NAMESPACE, "delete", "configmap", LEGACY_CONFIGMAP], None)?;
    testenv::wait_for("the CRD to be gone", Duration::from_secs(60), || {
        let gone = kubectl(&api, &["get", "crd", "--no-headers", "-o", "name"], None)
            .map(|out| !out.contains("etcdsnapshotfiles"))
            .map_err(|e| e.to_string());
        async move { gone.map(|g| g.then_some(())) }
    })
    .await?;
    let mut install = vec!["install", "etcdsnap", chart.as_str(), "--set", "preset=kubeadm"];
    install.extend(common);
    helm_on(&api, &install)?;
    wait_established(&api, "etcdsnapshotfiles.k3s.cattle.io")?;
    let crd = kubectl(&api, &["get", "crd", "etcdsnapshotfiles.k3s.cattle.io", "-o", "yaml"], None)?;
    assert!(crd.contains("helm.sh/resource-policy: keep"), "{crd}");
    helm_on(&api, &["uninstall", "etcdsnap"])?;
    kubectl(&api, &["get", "crd", "etcdsnapshotfiles.k3s.cattle.io"], None)?;
    kubectl(&api, &["-n", SYSTEM_NAMESPACE, "get", "configmap", LEGACY_CONFIGMAP], None)?;
    let left = kubectl(&api, &["-n", SYSTEM_NAMESPACE, "get", "daemonsets,roles,leases", "-o", "name"], None)?;
    assert!(!left.contains("etcdsnap"), "uninstall left: {left}");
    // Installing again adopts what the last release kept.
    helm_on(&api, &install)?;
    Ok(())
}
