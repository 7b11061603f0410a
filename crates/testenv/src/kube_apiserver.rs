//! A real kube-apiserver backed by a testenv etcd.

use crate::certs::{Pki, write};
use crate::etcd::Etcd;
use crate::process::{Server, testbin};
use crate::{Error, Result, free_port, random_suffix, wait_for};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// Audit policy: one `ResponseComplete` event per request, at Metadata level (verb, resource,
/// user, response code), so tests can count the requests a component really made.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
";

/// A running kube-apiserver with its own CA, an admin token in `system:masters`, an audit log and
/// a kubeconfig on disk. No controller-manager runs: no garbage collection, no namespace
/// finalization, no default service accounts.
#[derive(Debug)]
pub struct KubeApiServer {
    server: Server,
    url: String,
    admin_token: String,
    kubeconfig: PathBuf,
    ca: PathBuf,
    audit_log: PathBuf,
    dir: TempDir,
}

/// One audited request, as read from the API server's audit log.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub user: String,
    pub code: i64,
    pub uri: String,
}

impl AuditEvent {
    /// create, update, patch, delete and deletecollection.
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
    }
}

impl KubeApiServer {
    /// Starts an API server storing its objects under a fresh `--etcd-prefix` in `etcd`, so any
    /// number of API servers can share one etcd.
    pub async fn start(etcd: &Etcd) -> Result<KubeApiServer> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(etcd).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::other("kube-apiserver", "not started")))
    }

    async fn try_start(etcd: &Etcd) -> Result<KubeApiServer> {
        let bin = testbin("kube-apiserver")?;
        let dir = tempfile::Builder::new()
            .prefix("testenv-kube-")
            .tempdir()
            .map_err(|e| Error::io("create kube-apiserver temp dir", e))?;
        let d = dir.path();
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");

        let pki = Pki::new("kube-apiserver", &d.join("pki"))?;
        let serving =
            pki.server("apiserver", &["kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.0.0.1"])?;
        let sa_key = rcgen::KeyPair::generate().map_err(|e| Error::other("service account key", e))?;
        write(&d.join("sa.key"), &sa_key.serialize_pem())?;
        write(&d.join("sa.pub"), &sa_key.public_key_pem())?;
        let admin_token = format!("admin-{}", random_suffix());
        write(&d.join("tokens.csv"), &format!("{admin_token},admin,admin-uid,\"system:masters\"\n"))?;
        write(&d.join("audit-policy.yaml"), AUDIT_POLICY)?;
        let audit_log = d.join("audit.log");

        let mut args = vec![
            format!("--etcd-servers={}", etcd.endpoints().join(",")),
            format!("--etcd-prefix=/registry-{}", random_suffix()),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // 1.37 refuses to start when the endpoint reconciler (which publishes the
            // advertise address as the `kubernetes` Service's endpoints) would publish a
            // loopback address. Nothing here runs pods that would dial that Service, so no
            // reconciler; older releases accept the flag too.
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", d.join("certs").display()),
            format!("--tls-cert-file={}", serving.cert.display()),
            format!("--tls-private-key-file={}", serving.key.display()),
            format!("--client-ca-file={}", pki.ca_path().display()),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            format!("--service-account-issuer={url}"),
            format!("--service-account-key-file={}", d.join("sa.pub").display()),
            format!("--service-account-signing-key-file={}", d.join("sa.key").display()),
            "--authorization-mode=RBAC".into(),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
            format!("--audit-policy-file={}", d.join("audit-policy.yaml").display()),
            format!("--audit-log-path={}", audit_log.display()),
            "--audit-log-format=json".into(),
            "--audit-log-mode=blocking".into(),
            "--v=0".into(),
        ];
        if let Some(tls) = etcd.client_tls() {
            args.push(format!("--etcd-cafile={}", tls.ca.display()));
            args.push(format!("--etcd-certfile={}", tls.cert.display()));
            args.push(format!("--etcd-keyfile={}", tls.key.display()));
        }
        let server = Server::spawn("kube-apiserver", &bin, args, d.join("kube-apiserver.log"))?;
        let kubeconfig = d.join("kubeconfig");
        write(&kubeconfig, &kubeconfig_yaml(&url, &pki.ca_pem(), &admin_token, "admin"))?;

        let mut api = KubeApiServer { server, url, admin_token, kubeconfig, ca: pki.ca_path(), audit_log, dir };
        api.wait_ready().await?;
        Ok(api)
    }

    /// Waits for `/readyz` and for the `kube-system` namespace the API server creates itself.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let client = self.client().await?;
        let result = {
            let server = &mut self.server;
            wait_for("kube-apiserver /readyz and namespace kube-system", Duration::from_secs(120), || {
                let running = server.check_running();
                let client = client.clone();
                async move {
                    running.map_err(|e| e.to_string())?;
                    let req = http::Request::get("/readyz").body(Vec::new()).map_err(|e| e.to_string())?;
                    let text = client.request_text(req).await.map_err(|e| e.to_string())?;
                    if text.trim() != "ok" {
                        return Ok(None);
                    }
                    let namespaces: Api<Namespace> = Api::all(client);
                    Ok(namespaces.get_opt("kube-system").await.map_err(|e| e.to_string())?.map(|_| ()))
                }
            })
            .await
        };
        result.map_err(|e| match self.server.check_running() {
            Err(exited) => exited,
            Ok(()) => e,
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Bearer token of user `admin` in group `system:masters`.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Admin kubeconfig on disk, for `kubectl` and the `etcdsnap` binary.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// PEM file of the CA that signed the serving certificate.
    pub fn ca_path(&self) -> &Path {
        &self.ca
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }

    /// An admin client. Create one per tokio runtime (each `#[tokio::test]` has its own).
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Creates (if needed) namespace `namespace` and service account `name`, and returns a
    /// one-hour token for it from the TokenRequest API: the identity RBAC tests bind roles to,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub async fn mint_service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        let client = self.client().await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if namespaces.get_opt(namespace).await.map_err(|e| Error::other("get namespace", e))?.is_none() {
            let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}}))
                .map_err(|e| Error::other("namespace object", e))?;
            namespaces.create(&PostParams::default(), &ns).await.map_err(|e| Error::other("create namespace", e))?;
        }
        let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
        if accounts.get_opt(name).await.map_err(|e| Error::other("get service account", e))?.is_none() {
            let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                .map_err(|e| Error::other("service account object", e))?;
            accounts
                .create(&PostParams::default(), &sa)
                .await
                .map_err(|e| Error::other("create service account", e))?;
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
            ..Default::default()
        };
        let response = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|e| Error::other("request service account token", e))?;
        response
            .status
            .and_then(|s| s.token)
            .ok_or_else(|| Error::other("request service account token", "response has no status"))
    }

    /// Writes a kubeconfig for `token` into this server's temp dir and returns its path.
    pub fn write_kubeconfig(&self, file_name: &str, token: &str) -> Result<PathBuf> {
        let ca = std::fs::read_to_string(&self.ca).map_err(|e| Error::io("read API server CA", e))?;
        let path = self.dir.path().join(file_name);
        write(&path, &kubeconfig_yaml(&self.url, &ca, token, file_name))?;
        Ok(path)
    }

    /// A client authenticating with `token`.
    pub async fn client_for_token(&self, token: &str) -> Result<Client> {
        let path = self.write_kubeconfig(&format!("kubeconfig-{}", random_suffix()), token)?;
        client_from_kubeconfig(&path).await
    }

    /// Every request audited so far (ResponseComplete stage). A log that cannot be read is an
    /// error, never an empty list: tests that find no offending request in it must fail then.
    pub fn audit_events(&self) -> Result<Vec<AuditEvent>> {
        let text = std::fs::read_to_string(&self.audit_log)
            .map_err(|e| Error::io(format!("read the audit log {}", self.audit_log.display()), e))?;
        let mut events = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let s = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap_or_default().to_string();
            events.push(AuditEvent {
                verb: s("/verb"),
                resource: s("/objectRef/resource"),
                namespace: s("/objectRef/namespace"),
                name: s("/objectRef/name"),
                user: s("/user/username"),
                code: v.pointer("/responseStatus/code").and_then(|x| x.as_i64()).unwrap_or_default(),
                uri: s("/requestURI"),
            });
        }
        Ok(events)
    }

    /// Stops the API server (SIGKILL); `restart` brings it back on the same port and data.
    pub fn stop(&mut self) {
        self.server.kill();
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.server.restart()?;
        self.wait_ready().await
    }
}

async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| Error::other("read kubeconfig", e))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::other("load kubeconfig", e))?;
    Client::try_from(config).map_err(|e| Error::other("build kube client", e))
}

fn kubeconfig_yaml(url: &str, ca_pem: &str, token: &str, user: &str) -> String {
    use base64::Engine as _;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: testenv
  context:
    cluster: testenv
    user: {user}
current-context: testenv
",
        ca = b64(ca_pem.as_bytes())
    )
}
