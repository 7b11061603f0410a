//! Agents as a cluster runs them: each node its own process, its own data directory and its own
//! identity on the API server (a service account per node bound to cluster-admin), so the audit
//! log says which node made each request.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testenv::{KubeApiServer, S3Server};

use super::agent::Agent;
use super::s;

/// The bucket of the cluster's agents.
pub const BUCKET: &str = "cluster";
/// The agents' leader Lease duration in these tests.
pub const LEASE: Duration = Duration::from_secs(6);
/// Namespace of the agents' service accounts.
pub const AGENT_NAMESPACE: &str = "etcdsnap";

/// The service account of `node`'s agent.
pub fn service_account(node: &str) -> String {
    format!("agent-{node}")
}

/// A kubeconfig for `node`'s own service account, bound to cluster-admin.
async fn agent_kubeconfig(api: &KubeApiServer, node: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let account = service_account(node);
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
/// and keeping 2, compressed with zstd, as its own service account; with `s3`, also in
/// [`BUCKET`]; then `extra` arguments (which override these) and environment. Returns as soon as
/// the process runs.
pub async fn start_agent(
    node: &str,
    endpoint: &str,
    dir: &Path,
    api: &KubeApiServer,
    s3: Option<&S3Server>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Agent, Box<dyn std::error::Error>> {
    let (data_dir, kubeconfig) = (s(dir), s(&agent_kubeconfig(api, node).await?));
    let lease = format!("{}s", LEASE.as_secs());
    let mut args = vec!["--node-name", node, "--endpoints", endpoint, "--data-dir", &data_dir];
    args.extend(["--kubeconfig", &kubeconfig, "--leader-lease-duration", &lease]);
    args.extend(["--schedule", "*/3 * * * * *", "--schedule-jitter", "1s", "--retention", "2", "--compress", "zstd"]);
    args.extend(s3.map(|s3| s3.etcdsnap_flags(BUCKET)).unwrap_or_default());
    args.extend(extra);
    let mut env = env.to_vec();
    env.extend(s3.map(S3Server::credentials_env).into_iter().flatten());
    Agent::spawn(&args, &env, dir)
}

/// The leader Lease as written, if it exists.
pub async fn leader_lease(client: &kube::Client) -> Option<LeaseSpec> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    leases.get_opt("etcdsnap-leader").await.ok()??.spec
}

/// The node of the leader Lease's holder if it renewed within its duration (by this machine's
/// clock, which all the test's processes share). An agent holds it as `<node>/<instance>`.
pub async fn leader(client: &kube::Client) -> Option<String> {
    let spec = leader_lease(client).await?;
    let renewed = spec.renew_time?.0;
    let fresh =
        etcdsnap_storage::clock::now() < renewed + jiff::SignedDuration::from_secs(spec.lease_duration_seconds? as i64);
    let holder = spec.holder_identity.filter(|h| !h.is_empty() && fresh)?;
    Some(etcdsnap_kube::leader::holder_node(&holder).to_string())
}

/// Polls `done` until it holds; an error names `what` once `timeout` has passed.
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !done().await {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
