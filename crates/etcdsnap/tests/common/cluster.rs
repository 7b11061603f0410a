//! Agents as a cluster runs them: each node its own process, its own data directory and its own
//! identity on the API server (a service account per node bound to cluster-admin), so the audit
//! log says which node made each request.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use std::path::{Path, PathBuf};
use std::time::Duration;
use testenv::{KubeApiServer, S3Server};

pub const BUCKET: &str = "cluster";
/// The agents' leader Lease duration in these tests.
pub const LEASE: Duration = Duration::from_secs(6);
/// Namespace of the agents' service accounts.
const AGENT_NAMESPACE: &str = "etcdsnap";

pub struct Agent {
    pub node: String,
    pub child: Option<tokio::process::Child>,
    pub log: PathBuf,
    /// `127.0.0.1:<port>` of its /metrics.
    pub metrics: String,
}

impl Agent {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-TERM`) to the agent.
    pub fn signal(&self, signal: &str) -> Result<(), Box<dyn std::error::Error>> {
        let pid = self.pid().ok_or("agent not running")?;
        let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status()?;
        if !status.success() {
            return Err(format!("kill {signal} {pid} failed").into());
        }
        Ok(())
    }

    /// SIGTERM, then the exit status must be success.
    pub async fn stop_cleanly(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if let Some(pid) = child.id() {
            std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
        if !status.success() {
            return Err(format!("{} exited with {status}:\n{}", self.node, self.log_text()).into());
        }
        Ok(())
    }
}

/// The audit log's user name of `node`'s agent.
pub fn agent_user(node: &str) -> String {
    format!("system:serviceaccount:{AGENT_NAMESPACE}:agent-{node}")
}

/// A kubeconfig for `node`'s own service account, bound to cluster-admin.
pub async fn agent_kubeconfig(api: &KubeApiServer, node: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let account = format!("agent-{node}");
    let token = api.mint_service_account_token(AGENT_NAMESPACE, &account).await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(api.client().await?);
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta { name: Some(format!("etcdsnap-test-{account}")), ..Default::default() },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "cluster-admin".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: account.clone(),
            namespace: Some(AGENT_NAMESPACE.into()),
            ..Default::default()
        }]),
    };
    match bindings.create(&PostParams::default(), &binding).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(api.write_kubeconfig(&format!("kubeconfig-{account}"), &token)?)
}

/// An agent on `node` with its data in `dir`, taking snapshots every 3 s (jittered by up to 1 s)
/// and keeping 2, with `extra` arguments and environment.
pub async fn start_agent(
    node: &str,
    endpoint: &str,
    dir: &Path,
    api: &KubeApiServer,
    s3: Option<&S3Server>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Agent, Box<dyn std::error::Error>> {
    let log = dir.join("agent.log");
    let file = std::fs::File::create(&log)?;
    let metrics = format!("127.0.0.1:{}", testenv::free_port()?);
    let kubeconfig = agent_kubeconfig(api, node).await?;
    let (dd, kubeconfig) = (dir.to_string_lossy().to_string(), kubeconfig.to_string_lossy().to_string());
    let lease = format!("{}s", LEASE.as_secs());
    let mut cmd = super::command(&[
        "agent",
        "--node-name",
        node,
        "--endpoints",
        endpoint,
        "--data-dir",
        &dd,
        "--kubeconfig",
        &kubeconfig,
        "--schedule",
        "*/3 * * * * *",
        "--schedule-jitter",
        "1s",
        "--retention",
        "2",
        "--leader-lease-duration",
        &lease,
        "--metrics-addr",
        &metrics,
        "--compress",
        "zstd",
    ]);
    cmd.args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(s3) = s3 {
        cmd.args(["--s3", "--s3-endpoint", &s3.endpoint(), "--s3-insecure", "--s3-bucket", BUCKET]);
        cmd.env("AWS_ACCESS_KEY_ID", s3.access_key()).env("AWS_SECRET_ACCESS_KEY", s3.secret_key());
    }
    cmd.stdout(file.try_clone()?).stderr(file);
    Ok(Agent { node: node.into(), child: Some(cmd.spawn()?), log, metrics })
}

/// The holder of the leader Lease as written, fresh or not.
pub async fn lease_holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = leases.get_opt("etcdsnap-leader").await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// The holder of the leader Lease if it renewed within its duration (by this machine's clock,
/// which all the test's processes share).
pub async fn leader(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = leases.get_opt("etcdsnap-leader").await.ok()??;
    let spec = lease.spec?;
    let renewed = spec.renew_time?.0;
    let fresh =
        etcdsnap_storage::clock::now() < renewed + jiff::SignedDuration::from_secs(spec.lease_duration_seconds? as i64);
    spec.holder_identity.filter(|h| !h.is_empty() && fresh)
}
