//! Fills an etcd with Kubernetes-like objects until its database reaches a target size.
//! Used by `make demo` and the benchmarks: by default snapshots of realistic data, not random
//! bytes.
//!
//! Usage: etcd-load --endpoints URL[,URL] --target-bytes N [--concurrency C]
//!        [--profile kube|random-values]
//!
//! `--profile random-values` stores values of 8-16 KB of random bytes instead, under the same
//! `/registry/` keys: a database of mostly bbolt overflow pages, the other extreme of what a
//! snapshot's bytes look like, so a memory or speed claim can be checked on both.

use etcd_client::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the values look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// Kubernetes-like JSON objects (the default): what a real cluster's etcd holds.
    Kube,
    /// 8-16 KB of random bytes per value: incompressible, and large enough that bbolt keeps
    /// each value on overflow pages of its own.
    RandomValues,
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kube" => Ok(Profile::Kube),
            "random-values" => Ok(Profile::RandomValues),
            other => Err(format!("unknown profile {other} (kube, random-values)")),
        }
    }
}

impl Profile {
    /// Key and value of the `i`th object of this profile.
    fn object(self, i: u64) -> (String, Vec<u8>) {
        match self {
            Profile::Kube => {
                let (key, value) = object(i);
                (key, value.into_bytes())
            }
            Profile::RandomValues => random_value(i),
        }
    }
}

/// Smallest and largest value of the random-values profile.
const RANDOM_VALUE_MIN: usize = 8 * 1024;
const RANDOM_VALUE_MAX: usize = 16 * 1024;

/// The `i`th object of the random-values profile: the same key as the kube profile's (so key
/// sizes and bbolt's branch pages look alike) and a random value whose length is spread evenly
/// over [`RANDOM_VALUE_MIN`, `RANDOM_VALUE_MAX`], so the overflow runs are not all one size.
fn random_value(i: u64) -> (String, Vec<u8>) {
    let (kind, ns) = object_kind(i);
    let spread = (RANDOM_VALUE_MAX - RANDOM_VALUE_MIN + 1) as u64;
    let len = RANDOM_VALUE_MIN + (splitmix(i ^ 0x7a11) % spread) as usize;
    (object_key(kind, ns, &object_name(kind, i)), random_bytes(i, len))
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function: a well-mixed 64-bit value from a counter.
fn splitmix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Pseudo-random bytes (splitmix64): reproducible from the seed, and as incompressible as
/// encrypted data.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_add(GOLDEN);
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        x = x.wrapping_add(GOLDEN);
        bytes.extend_from_slice(&splitmix(x).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Random payloads in base64, so payloads that are random in real clusters (encrypted secrets,
/// certificates, tokens) are random here too and compress like the real thing.
fn noise(seed: u64, len: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(random_bytes(seed, len))
}

/// Kind (resource) and namespace of the `i`th object: a round of the usual suspects.
fn object_kind(i: u64) -> (&'static str, &'static str) {
    let kinds = [
        ("configmaps", "kube-system"),
        ("pods", "default"),
        ("secrets", "app"),
        ("services", "default"),
        ("events", "default"),
    ];
    kinds[(i % kinds.len() as u64) as usize]
}

fn object_name(kind: &str, i: u64) -> String {
    format!("{kind}-{i:08}")
}

/// `/registry/<kind>/<namespace>/<name>`: the layout the API server uses.
fn object_key(kind: &str, ns: &str, name: &str) -> String {
    format!("/registry/{kind}/{ns}/{name}")
}

/// The `i`th Kubernetes-like object: key and JSON value.
fn object(i: u64) -> (String, String) {
    let (kind, ns) = object_kind(i);
    let name = object_name(kind, i);
    let containers: Vec<serde_json::Value> = (0..(1 + i % 3))
        .map(|c| {
            serde_json::json!({
                "name": format!("container-{c}"),
                "image": format!("registry.example.com/team-{}/service-{}:v1.{}.{}", i % 23, i % 101, i % 7, c),
                "env": (0..(8 + i % 12)).map(|e| serde_json::json!({"name": format!("ENV_VAR_{e}"), "value": format!("value-{}-{}", i.wrapping_mul(2654435761) % 100000, e)})).collect::<Vec<_>>(),
                "resources": {"requests": {"cpu": format!("{}m", 100 + i % 900), "memory": format!("{}Mi", 64 + i % 960)}},
                "ports": [{"containerPort": 8000 + (i % 1000), "protocol": "TCP"}],
            })
        })
        .collect();
    let value = serde_json::json!({
        "apiVersion": "v1", "kind": kind,
        "metadata": {
            "name": name, "namespace": ns,
            "uid": format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", i, i % 65536, i % 4096, (i * 7) % 4096, i.wrapping_mul(0x9E3779B97F4A7C15) >> 16),
            "resourceVersion": (i + 1000).to_string(),
            "creationTimestamp": "2026-11-25T10:00:00Z",
            "labels": {"app.kubernetes.io/name": format!("service-{}", i % 101), "app.kubernetes.io/part-of": format!("team-{}", i % 23), "pod-template-hash": format!("{:x}", i.wrapping_mul(31337) % 0xffffffff)},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": format!("{{\"spec\":{{\"replicas\":{}}}}}", i % 9)},
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2026-11-25T10:00:00Z"}],
        },
        "spec": {"containers": containers, "nodeName": format!("worker-{}", i % 50), "serviceAccountName": "default"},
        // Secrets are stored encrypted (k8s:enc:aescbc), configmaps often carry certificates:
        // both look random to a compressor.
        "data": match kind {
            "secrets" => serde_json::json!({"tls.key": noise(i, 1200), "token": noise(i ^ 0xabcdef, 300)}),
            "configmaps" => serde_json::json!({"ca.crt": noise(i ^ 0x1234, 900)}),
            _ => serde_json::json!({"checksum": noise(i ^ 0x55, 48)}),
        },
        "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i % 256, (i / 256) % 256, (i / 65536) % 256)},
    });
    (object_key(kind, ns, &name), value.to_string())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("etcd-load: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut endpoints = String::from("http://127.0.0.1:2379");
    let mut target: u64 = 64 * 1024 * 1024;
    let mut concurrency = 16;
    let mut profile = Profile::Kube;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--endpoints" => endpoints = it.next().ok_or("--endpoints needs a value")?,
            "--target-bytes" => target = it.next().ok_or("--target-bytes needs a value")?.parse()?,
            "--concurrency" => concurrency = it.next().ok_or("--concurrency needs a value")?.parse()?,
            "--profile" => profile = it.next().ok_or("--profile needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let eps: Vec<String> = endpoints.split(',').map(str::to_string).collect();
    let client = Client::connect(&eps, None).await?;
    let next = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    loop {
        let db_size = client.clone().status().await?.db_size() as u64;
        if db_size >= target {
            println!(
                "etcd-load: {} objects, database {} MB, {:.1}s",
                next.load(Ordering::Relaxed),
                db_size / 1_000_000,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let mut c = client.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..250 {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let (k, v) = profile.object(i);
                    c.put(k, v, None).await?;
                }
                Ok::<(), etcd_client::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
}
