//! Real etcd servers: one member or a cluster, plain or mutual TLS.

use crate::certs::{Pki, TlsFiles};
use crate::process::{Server, testbin};
use crate::versions::{etcd_version, testbin_version};
use crate::{Error, Result, free_port, wait_for};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// One etcd member process.
#[derive(Debug)]
pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    server: Server,
}

impl EtcdMember {
    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// A running etcd cluster (possibly of one member). Killed on drop.
#[derive(Debug)]
pub struct Etcd {
    members: Vec<EtcdMember>,
    client_tls: Option<TlsFiles>,
    server_tls: Option<TlsFiles>,
    opts: EtcdOptions,
    token: String,
    dir: TempDir,
}

/// Options for [`Etcd::start`].
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub members: usize,
    pub tls: bool,
    /// Extra flags for every member, e.g. `--quota-backend-bytes=8589934592`.
    pub extra_args: Vec<String>,
    /// Keep fsync on (benchmarks); tests use `--unsafe-no-fsync` for speed.
    pub fsync: bool,
    /// Which etcd to run: a minor such as `"3.5"` or a full pinned version (`"v3.7.3"`), one of
    /// `ETCD_VERSIONS` in testbins/versions.env. `None` runs the default (`ETCD_VERSION`). Users
    /// run several minors (K3s and RKE2 still ship 3.5), so saves and restores are tested
    /// against each.
    pub version: Option<String>,
}

impl Etcd {
    /// One member over plain HTTP.
    pub async fn single() -> Result<Etcd> {
        Self::start(EtcdOptions { members: 1, ..Default::default() }).await
    }

    /// `n` members over plain HTTP.
    pub async fn cluster(n: usize) -> Result<Etcd> {
        Self::start(EtcdOptions { members: n, ..Default::default() }).await
    }

    /// `n` members with mutual TLS on client and peer URLs (`--client-cert-auth`).
    pub async fn cluster_tls(n: usize) -> Result<Etcd> {
        Self::start(EtcdOptions { members: n, tls: true, ..Default::default() }).await
    }

    /// One member over plain HTTP running etcd `version` (a minor such as `"3.5"`, see
    /// [`EtcdOptions::version`]).
    pub async fn single_version(version: &str) -> Result<Etcd> {
        Self::start(EtcdOptions { members: 1, version: Some(version.to_string()), ..Default::default() }).await
    }

    /// The pinned etcd release this cluster runs (e.g. `v3.5.35`); `None` for the default.
    pub fn version(&self) -> Option<&str> {
        self.opts.version.as_deref()
    }

    /// Path of the etcd tool `name` (`etcd`, `etcdctl`, `etcdutl`) of the version this cluster
    /// runs: a snapshot of an etcd 3.5 is restored with etcdutl 3.5, as a user would.
    pub fn testbin(&self, name: &str) -> Result<PathBuf> {
        tool(self.opts.version.as_deref(), name)
    }

    /// Starts a cluster; retries with fresh ports if another process grabbed one meanwhile.
    pub async fn start(mut opts: EtcdOptions) -> Result<Etcd> {
        // A minor is resolved to its pinned release once, so every member runs the same one.
        opts.version = opts.version.as_deref().map(etcd_version).transpose()?;
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(&opts).await {
                Ok(etcd) => return Ok(etcd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::other("etcd", "not started")))
    }

    async fn try_start(opts: &EtcdOptions) -> Result<Etcd> {
        let n = opts.members.max(1);
        tool(opts.version.as_deref(), "etcd")?;
        let dir = tempfile::Builder::new()
            .prefix("testenv-etcd-")
            .tempdir()
            .map_err(|e| Error::io("create etcd temp dir", e))?;
        let scheme = if opts.tls { "https" } else { "http" };
        let (server_tls, client_tls) = if opts.tls {
            let pki = Pki::new("etcd", &dir.path().join("pki"))?;
            (Some(pki.server("server", &[])?), Some(pki.client("client", "root", &[])?))
        } else {
            (None, None)
        };

        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free_port()?, free_port()?));
        }
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}={scheme}://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("testenv-{}", crate::random_suffix());

        let mut etcd = Etcd { members: Vec::new(), client_tls, server_tls, opts: opts.clone(), token, dir };
        for (name, (client, peer)) in names.iter().zip(&ports) {
            let member = etcd.spawn_member(name, *client, *peer, &initial_cluster, "new")?;
            etcd.members.push(member);
        }
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    fn scheme(&self) -> &'static str {
        if self.server_tls.is_some() { "https" } else { "http" }
    }

    fn spawn_member(
        &self,
        name: &str,
        client: u16,
        peer: u16,
        initial_cluster: &str,
        state: &str,
    ) -> Result<EtcdMember> {
        let data_dir = self.dir.path().join(name);
        self.spawn_member_in(name, client, peer, data_dir, initial_cluster, state)
    }

    fn spawn_member_in(
        &self,
        name: &str,
        client: u16,
        peer: u16,
        data_dir: PathBuf,
        initial_cluster: &str,
        state: &str,
    ) -> Result<EtcdMember> {
        let scheme = self.scheme();
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("{scheme}://127.0.0.1:{peer}");
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={initial_cluster}"),
            format!("--initial-cluster-token={}", self.token),
            format!("--initial-cluster-state={state}"),
            "--log-level=warn".into(),
        ];
        if !self.opts.fsync {
            args.push("--unsafe-no-fsync".into());
        }
        if let Some(tls) = &self.server_tls {
            args.extend(tls_args(tls));
        }
        args.extend(self.opts.extra_args.iter().cloned());
        let bin = self.testbin("etcd")?;
        let server = Server::spawn(&format!("etcd {name}"), &bin, args, self.dir.path().join(format!("{name}.log")))?;
        Ok(EtcdMember { name: name.to_string(), client_url, peer_url, data_dir, server })
    }

    /// Starts one plain-HTTP member on an existing data directory, e.g. one written by
    /// `etcdutl snapshot restore --name <name> --initial-advertise-peer-urls
    /// http://127.0.0.1:<peer_port>`: etcd then runs with the membership stored in it, so the
    /// name and peer port must be the ones it was restored with. The client port is random.
    /// The data directory is left in place when the server is dropped.
    pub async fn start_on_data_dir(data_dir: &Path, name: &str, peer_port: u16) -> Result<Etcd> {
        Self::start_on_data_dir_version(data_dir, name, peer_port, None).await
    }

    /// [`Etcd::start_on_data_dir`] with etcd `version` (see [`EtcdOptions::version`]; `None` is
    /// the default): a data directory restored by one minor's etcdutl is served by that minor's
    /// etcd, the way a user restores and restarts a cluster.
    pub async fn start_on_data_dir_version(
        data_dir: &Path,
        name: &str,
        peer_port: u16,
        version: Option<&str>,
    ) -> Result<Etcd> {
        let version = version.map(etcd_version).transpose()?;
        tool(version.as_deref(), "etcd")?;
        let opts = EtcdOptions { members: 1, version, ..Default::default() };
        let dir = tempfile::Builder::new()
            .prefix("testenv-etcd-")
            .tempdir()
            .map_err(|e| Error::io("create etcd temp dir", e))?;
        let mut etcd = Etcd {
            members: Vec::new(),
            client_tls: None,
            server_tls: None,
            opts,
            token: format!("testenv-{}", crate::random_suffix()),
            dir,
        };
        let initial_cluster = format!("{name}=http://127.0.0.1:{peer_port}");
        let member =
            etcd.spawn_member_in(name, free_port()?, peer_port, data_dir.to_path_buf(), &initial_cluster, "existing")?;
        etcd.members.push(member);
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    /// Adds a learner (a non-voting member catching up) and returns its index.
    pub async fn add_learner(&mut self) -> Result<usize> {
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let name = format!("m{}", self.members.len());
        let peer_url = format!("{}://127.0.0.1:{peer_port}", self.scheme());
        let mut client = self.client().await?;
        let options = etcd_client::MemberAddOptions::new().with_is_learner();
        client.member_add([peer_url.clone()], Some(options)).await.map_err(|e| Error::other("add learner", e))?;
        let mut cluster: Vec<String> = self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect();
        cluster.push(format!("{name}={peer_url}"));
        let member = self.spawn_member(&name, client_port, peer_port, &cluster.join(","), "existing")?;
        self.members.push(member);
        self.wait_ready().await?;
        Ok(self.members.len() - 1)
    }

    /// Waits until every running member answers `Status` and knows a leader.
    pub async fn wait_ready(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if !self.members[i].server.is_running() {
                continue;
            }
            let endpoint = self.members[i].client_url.clone();
            let options = self.connect_options();
            let what = format!("etcd member {} at {endpoint}", self.members[i].name);
            let member = &mut self.members[i];
            wait_for(&what, Duration::from_secs(60), || {
                let endpoint = endpoint.clone();
                let options = options.clone();
                let running = member.server.check_running();
                async move {
                    running.map_err(|e| e.to_string())?;
                    let mut client = Client::connect([endpoint], Some(options)).await.map_err(|e| e.to_string())?;
                    let status = client.status().await.map_err(|e| e.to_string())?;
                    Ok((status.leader() != 0).then_some(()))
                }
            })
            .await
            .map_err(|e| match self.members[i].server.check_running() {
                Err(exited) => exited,
                Ok(()) => e,
            })?;
        }
        Ok(())
    }

    /// Client URLs of all members, in member order.
    /// The cluster token the members were started with (etcd derives the cluster ID from it and
    /// the members' names and peer URLs): a member restored in place with it keeps the ID.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Client certificate, key and CA for mutual TLS (None for plain HTTP clusters).
    pub fn client_tls(&self) -> Option<&TlsFiles> {
        self.client_tls.as_ref()
    }

    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    pub fn member_mut(&mut self, i: usize) -> &mut EtcdMember {
        &mut self.members[i]
    }

    /// The temp dir holding data dirs, logs and certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connection options matching this cluster (TLS identity when mTLS is on).
    pub fn connect_options(&self) -> ConnectOptions {
        let mut options =
            ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.client_tls {
            let ca = std::fs::read(&tls.ca).unwrap_or_default();
            let cert = std::fs::read(&tls.cert).unwrap_or_default();
            let key = std::fs::read(&tls.key).unwrap_or_default();
            options = options.with_tls(
                TlsOptions::new().ca_certificate(Certificate::from_pem(ca)).identity(Identity::from_pem(cert, key)),
            );
        }
        options
    }

    /// A client connected to every member.
    pub async fn client(&self) -> Result<Client> {
        Client::connect(self.endpoints(), Some(self.connect_options()))
            .await
            .map_err(|e| Error::other("connect to etcd", e))
    }

    /// Index of the current leader, asked of the first running member.
    pub async fn leader_index(&mut self) -> Result<usize> {
        for i in 0..self.members.len() {
            if !self.members[i].server.is_running() {
                continue;
            }
            let endpoint = self.members[i].client_url.clone();
            let mut client = Client::connect([endpoint], Some(self.connect_options()))
                .await
                .map_err(|e| Error::other("connect to etcd", e))?;
            let status = client.status().await.map_err(|e| Error::other("etcd status", e))?;
            let leader = status.leader();
            let list = client.member_list().await.map_err(|e| Error::other("etcd member list", e))?;
            if let Some(m) = list.members().iter().find(|m| m.id() == leader)
                && let Some(idx) = self.members.iter().position(|x| x.name == m.name())
            {
                return Ok(idx);
            }
        }
        Err(Error::other("etcd leader", "no running member knows a leader"))
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        self.members[i].server.kill();
    }

    /// Restarts member `i` with its data dir, and waits until it serves again.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        // A restarted member must not try to bootstrap a new cluster.
        self.members[i].server.restart()?;
        self.wait_ready().await
    }
}

/// The etcd tool `name` of `version` (`None`: the default's stable symlink). Looked up before
/// anything is started, so a version that was not built fails naming the path to build.
fn tool(version: Option<&str>, name: &str) -> Result<PathBuf> {
    match version {
        Some(version) => testbin_version(name, version),
        None => testbin(name),
    }
}

fn tls_args(tls: &TlsFiles) -> Vec<String> {
    vec![
        format!("--cert-file={}", tls.cert.display()),
        format!("--key-file={}", tls.key.display()),
        format!("--trusted-ca-file={}", tls.ca.display()),
        "--client-cert-auth".into(),
        format!("--peer-cert-file={}", tls.cert.display()),
        format!("--peer-key-file={}", tls.key.display()),
        format!("--peer-trusted-ca-file={}", tls.ca.display()),
        "--peer-client-cert-auth".into(),
    ]
}
