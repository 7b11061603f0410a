//! Starts a local etcd, kube-apiserver and S3 server (bucket `etcdsnap`) and keeps them running
//! until SIGINT/SIGTERM. Used by `make demo` and by bench/ scripts.
//!
//! Usage: testenv-up [--env-file PATH] [--etcd-members N] [--no-kube] [--no-s3]
//!
//! When ready it writes PATH (default `./testenv.env`): shell `export` lines for the etcdsnap
//! settings, KUBECONFIG and the S3 credentials, then prints `ready`.

use std::path::PathBuf;
use testenv::{Etcd, KubeApiServer, S3Server};

struct Args {
    env_file: PathBuf,
    members: usize,
    kube: bool,
    s3: bool,
    extra_etcd_args: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args =
        Args { env_file: PathBuf::from("testenv.env"), members: 1, kube: true, s3: true, extra_etcd_args: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--env-file" => args.env_file = it.next().ok_or("--env-file needs a path")?.into(),
            "--etcd-members" => {
                args.members = it
                    .next()
                    .ok_or("--etcd-members needs a number")?
                    .parse()
                    .map_err(|e| format!("--etcd-members: {e}"))?
            }
            "--etcd-arg" => args.extra_etcd_args.push(it.next().ok_or("--etcd-arg needs a value")?),
            "--no-kube" => args.kube = false,
            "--no-s3" => args.s3 = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("testenv-up: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let etcd = Etcd::start(testenv::EtcdOptions {
        members: args.members,
        extra_args: args.extra_etcd_args.clone(),
        ..Default::default()
    })
    .await?;
    let mut env = vec![("ETCDSNAP_ENDPOINTS".to_string(), etcd.endpoints().join(","))];
    env.push(("TESTENV_ETCD_DIR".into(), etcd.dir().display().to_string()));

    let api = if args.kube { Some(KubeApiServer::start(&etcd).await?) } else { None };
    if let Some(api) = &api {
        env.push(("KUBECONFIG".into(), api.kubeconfig_path().display().to_string()));
        env.push(("TESTENV_KUBE_AUDIT_DIR".into(), api.dir().display().to_string()));
    }
    let s3 = if args.s3 { Some(S3Server::start().await?) } else { None };
    if let Some(s3) = &s3 {
        s3.create_bucket("etcdsnap").await?;
        env.extend([
            ("ETCDSNAP_S3_ENDPOINT".into(), s3.endpoint()),
            ("ETCDSNAP_S3_BUCKET".into(), "etcdsnap".into()),
            ("ETCDSNAP_S3_INSECURE".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), s3.access_key().to_string()),
            ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key().to_string()),
            ("TESTENV_S3_ROOT".into(), s3.root().display().to_string()),
        ]);
    }
    let text: String = env.iter().map(|(k, v)| format!("export {k}={}\n", shell_quote(v))).collect();
    std::fs::write(&args.env_file, text)?;

    println!("etcd:           {}", etcd.endpoints().join(","));
    if let Some(api) = &api {
        println!("kube-apiserver: {} (kubeconfig {})", api.url(), api.kubeconfig_path().display());
    }
    if let Some(s3) = &s3 {
        println!("S3 (versitygw): {} bucket etcdsnap, data in {}", s3.url(), s3.root().display());
    }
    println!("environment:    {}", args.env_file.display());
    println!("ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop((s3, api, etcd));
    Ok(())
}
