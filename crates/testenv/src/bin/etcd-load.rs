//! Fills an etcd with Kubernetes-like objects until its database reaches a target size.
//! Used by `make demo` and the benchmarks: by default snapshots of realistic data, not random
//! bytes.
//!
//! Usage: etcd-load --endpoints URL[,URL] --target-bytes N [--concurrency C]
//!        [--profile kube|random-values]
//!        etcd-load --endpoints URL[,URL] --rate W (--duration-secs S | --writes N)
//!        [--concurrency C] [--seed X]
//!
//! `--profile random-values` stores values of 8-16 KB of random bytes instead, under the same
//! `/registry/` keys: a database of mostly bbolt overflow pages, the other extreme of what a
//! snapshot's bytes look like, so a memory or speed claim can be checked on both.
//!
//! `--rate W` is the steady mode (point-in-time recovery's benchmark): W writes per second,
//! open loop (write `i` is due at `start + i / W`, whatever the latency of the others), each
//! one transaction that makes exactly one revision, the churn of a busy control plane: status
//! updates of the objects already there (40%), node lease renewals (30%), Events created (15%)
//! and Events deleted once 2,000 exist (15%; until then, created). Writes go out as the API
//! server sends them: a guarded transaction (`version > 0` for an update or delete,
//! `create_revision == 0` for a create). It stops after `--writes N` or `--duration-secs S`
//! (`N = W * S`) and prints one JSON line: the writes made, the revision before and after,
//! the rate reached, write latency and how far behind schedule it fell.

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
    let (key, value) = object_value(i);
    (key, value.to_string())
}

/// [`object`] before it is serialized.
fn object_value(i: u64) -> (String, serde_json::Value) {
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
    (object_key(kind, ns, &name), value)
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
    let mut rate: Option<f64> = None;
    let mut duration_secs: Option<f64> = None;
    let mut writes: Option<u64> = None;
    let mut seed: u64 = 1;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--endpoints" => endpoints = it.next().ok_or("--endpoints needs a value")?,
            "--target-bytes" => target = it.next().ok_or("--target-bytes needs a value")?.parse()?,
            "--concurrency" => concurrency = it.next().ok_or("--concurrency needs a value")?.parse()?,
            "--profile" => profile = it.next().ok_or("--profile needs a value")?.parse()?,
            "--rate" => rate = Some(it.next().ok_or("--rate needs a value")?.parse()?),
            "--duration-secs" => duration_secs = Some(it.next().ok_or("--duration-secs needs a value")?.parse()?),
            "--writes" => writes = Some(it.next().ok_or("--writes needs a value")?.parse()?),
            "--seed" => seed = it.next().ok_or("--seed needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let eps: Vec<String> = endpoints.split(',').map(str::to_string).collect();
    let client = Client::connect(&eps, None).await?;
    if let Some(rate) = rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--rate must be a positive number of writes per second".into());
        }
        let total = match (writes, duration_secs) {
            (Some(n), None) => n,
            (None, Some(s)) if s > 0.0 => (rate * s).round() as u64,
            _ => return Err("--rate needs exactly one of --writes N and --duration-secs S (> 0)".into()),
        };
        let summary = steady::run(client, steady::Plan { rate, total, concurrency: concurrency.max(1), seed }).await?;
        println!("{summary}");
        return Ok(());
    }
    if writes.is_some() || duration_secs.is_some() {
        return Err("--writes and --duration-secs belong to --rate".into());
    }
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

/// The steady mode: a fixed rate of Kubernetes-like writes, one revision each.
mod steady {
    use super::{object_kind, object_name, object_value, splitmix};
    use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    pub struct Plan {
        pub rate: f64,
        pub total: u64,
        pub concurrency: usize,
        pub seed: u64,
    }

    /// Node leases renewed (`/registry/leases/kube-node-lease/worker-N`).
    const NODES: u64 = 500;
    /// Events kept before the oldest is deleted for each new one.
    const EVENT_WINDOW: usize = 2000;

    /// What one write does.
    enum Write {
        Update(u64),
        Lease(u64),
        CreateEvent,
        DeleteEvent,
    }

    /// Kinds of write, by share of the load, chosen by a hash of the write's index. With no
    /// objects to update (an empty etcd) updates are lease renewals.
    fn choose(seed: u64, i: u64, objects: u64) -> Write {
        let h = splitmix(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i);
        match h % 100 {
            0..40 if objects > 0 => Write::Update((h >> 8) % objects),
            0..40 => Write::Lease((h >> 8) % NODES),
            40..70 => Write::Lease((h >> 8) % NODES),
            70..85 => Write::CreateEvent,
            _ => Write::DeleteEvent,
        }
    }

    fn timestamp(unix_ms: u64) -> String {
        jiff::Timestamp::from_millisecond(unix_ms as i64).map(|t| t.to_string()).unwrap_or_default()
    }

    #[allow(clippy::disallowed_methods, reason = "a load generator outside etcdsnap: the true time")]
    fn now_ms() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    /// A status update of object `j`: a new resourceVersion, heartbeat and probe time.
    fn updated(j: u64, generation: u64) -> (String, String) {
        let (key, mut value) = object_value(j);
        let now = timestamp(now_ms());
        value["metadata"]["resourceVersion"] = serde_json::json!(generation.to_string());
        value["metadata"]["managedFields"][0]["time"] = serde_json::json!(now);
        value["status"]["conditions"] = serde_json::json!([
            {"type": "Ready", "status": "True", "lastProbeTime": now, "lastTransitionTime": "2026-11-25T10:00:00Z"},
            {"type": "ContainersReady", "status": "True", "lastProbeTime": now},
        ]);
        (key, value.to_string())
    }

    fn lease(node: u64, generation: u64) -> (String, String) {
        let name = format!("worker-{node}");
        let value = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {
                "name": name, "namespace": "kube-node-lease",
                "uid": format!("{:016x}-{:04x}", splitmix(node ^ 0x1ea5e), node),
                "resourceVersion": generation.to_string(),
                "creationTimestamp": "2026-11-25T10:00:00Z",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": format!("{:016x}", splitmix(node))}],
                "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "coordination.k8s.io/v1", "time": timestamp(now_ms())}],
            },
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": timestamp(now_ms())},
        });
        (format!("/registry/leases/kube-node-lease/{name}"), value.to_string())
    }

    fn event(n: u64, objects: u64) -> (String, String) {
        let mut j = splitmix(n ^ 0xe7e47) % objects.max(1);
        if object_kind(j).0 == "events" {
            // About an object that is not itself an Event, so that no Event made here is named
            // like the fill's (`events-N`), which count the objects to update.
            j = j.saturating_sub(1);
        }
        let (kind, ns) = object_kind(j);
        let object = object_name(kind, j);
        let name = format!("{object}.{:016x}", splitmix(n));
        let now = timestamp(now_ms());
        let (reason, message) = match n % 4 {
            0 => ("Scheduled", format!("Successfully assigned {ns}/{object} to worker-{}", j % 50)),
            1 => (
                "Pulled",
                format!(
                    "Container image \"registry.example.com/team-{}/service-{}:v1.{}.0\" already present on machine",
                    j % 23,
                    j % 101,
                    j % 7
                ),
            ),
            2 => ("Started", "Started container container-0".to_string()),
            _ => (
                "Unhealthy",
                format!(
                    "Readiness probe failed: Get \"http://10.{}.{}.{}:{}/healthz\": context deadline exceeded",
                    j % 256,
                    (j / 256) % 256,
                    n % 256,
                    8000 + j % 1000
                ),
            ),
        };
        let value = serde_json::json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns, "uid": format!("{:016x}-{:08x}", splitmix(n ^ 0xabc), n), "resourceVersion": n.to_string(), "creationTimestamp": now},
            "involvedObject": {"kind": kind, "namespace": ns, "name": object, "apiVersion": "v1", "fieldPath": "spec.containers{container-0}"},
            "reason": reason, "message": message,
            "source": {"component": "kubelet", "host": format!("worker-{}", j % 50)},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": if n % 4 == 3 { "Warning" } else { "Normal" },
            "reportingComponent": "kubelet", "reportingInstance": format!("worker-{}", j % 50),
        });
        (format!("/registry/events/{ns}/{name}"), value.to_string())
    }

    /// The objects the fill made: indices 0..N, five kinds in turn.
    async fn objects(client: &mut Client) -> Result<u64, etcd_client::Error> {
        let mut n = 0;
        for i in 0..5 {
            let (kind, ns) = object_kind(i);
            let prefix = format!("/registry/{kind}/{ns}/{kind}-");
            n += client.get(prefix, Some(GetOptions::new().with_prefix().with_count_only())).await?.count() as u64;
        }
        Ok(n)
    }

    #[derive(Default)]
    struct Tally {
        latencies_us: Vec<u64>,
        behind_us: u64,
        puts: u64,
        deletes: u64,
        failed_guards: u64,
    }

    pub async fn run(mut client: Client, plan: Plan) -> Result<String, Box<dyn std::error::Error>> {
        let objects = objects(&mut client).await?;
        let start_revision = client.status().await?.header().map(|h| h.revision()).unwrap_or(0);
        let next = Arc::new(AtomicU64::new(0));
        let events_made = Arc::new(AtomicU64::new(0));
        // Events whose create has completed, oldest first: the only ones a delete may take, so
        // every delete removes a key that exists (and so makes a revision).
        let events: Arc<Mutex<VecDeque<String>>> = Arc::new(Mutex::new(VecDeque::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..plan.concurrency {
            let (mut c, next, events_made, events) =
                (client.clone(), next.clone(), events_made.clone(), events.clone());
            let (rate, total, seed) = (plan.rate, plan.total, plan.seed);
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<Tally, etcd_client::Error>(tally);
                    }
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    let sent = Instant::now();
                    tally.behind_us = tally.behind_us.max(sent.saturating_duration_since(due).as_micros() as u64);
                    let generation = start_revision as u64 + i + 1;
                    let mut write = choose(seed, i, objects);
                    let victim = match write {
                        Write::DeleteEvent => {
                            let mut q = events.lock().unwrap_or_else(|e| e.into_inner());
                            if q.len() > EVENT_WINDOW { q.pop_front() } else { None }
                        }
                        _ => None,
                    };
                    if matches!(write, Write::DeleteEvent) && victim.is_none() {
                        write = Write::CreateEvent;
                    }
                    let (txn, created) = match write {
                        Write::Update(j) => {
                            let (k, v) = updated(j, generation);
                            (guarded_put(k, v, true), None)
                        }
                        Write::Lease(node) => {
                            // Created by the first renewal, updated by every other.
                            let (k, v) = lease(node, generation);
                            (Txn::new().and_then([TxnOp::put(k, v, None)]), None)
                        }
                        Write::CreateEvent => {
                            let n = events_made.fetch_add(1, Ordering::Relaxed);
                            // Unique across runs too: the Events of an earlier run may still exist.
                            let (k, v) = event(((start_revision as u64) << 24) + n, objects);
                            (guarded_put(k.clone(), v, false), Some(k))
                        }
                        Write::DeleteEvent => {
                            let k = victim.unwrap_or_default();
                            let txn = Txn::new()
                                .when([Compare::version(k.clone(), CompareOp::Greater, 0)])
                                .and_then([TxnOp::delete(k.clone(), None)])
                                .or_else([TxnOp::get(k, None)]);
                            (txn, None)
                        }
                    };
                    let is_delete = matches!(write, Write::DeleteEvent);
                    let resp = c.txn(txn).await?;
                    tally.latencies_us.push(sent.elapsed().as_micros() as u64);
                    if !resp.succeeded() {
                        tally.failed_guards += 1;
                    } else if is_delete {
                        tally.deletes += 1;
                    } else {
                        tally.puts += 1;
                    }
                    if let Some(k) = created {
                        events.lock().unwrap_or_else(|e| e.into_inner()).push_back(k);
                    }
                }
            }));
        }
        let mut all = Tally::default();
        for t in tasks {
            let t = t.await??;
            all.latencies_us.extend(t.latencies_us);
            all.behind_us = all.behind_us.max(t.behind_us);
            all.puts += t.puts;
            all.deletes += t.deletes;
            all.failed_guards += t.failed_guards;
        }
        let seconds = started.elapsed().as_secs_f64();
        let end_revision = client.status().await?.header().map(|h| h.revision()).unwrap_or(0);
        all.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            let l = &all.latencies_us;
            if l.is_empty() { 0.0 } else { l[((l.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0 }
        };
        let writes = all.puts + all.deletes;
        Ok(serde_json::json!({
            "mode": "steady",
            "rate": plan.rate,
            "writes": writes,
            "puts": all.puts,
            "deletes": all.deletes,
            "failed_guards": all.failed_guards,
            "objects": objects,
            "seconds": seconds,
            "achieved_rate": writes as f64 / seconds,
            "start_revision": start_revision,
            "end_revision": end_revision,
            "latency_ms_p50": pct(0.50),
            "latency_ms_p99": pct(0.99),
            "latency_ms_max": pct(1.0),
            "max_behind_schedule_ms": all.behind_us as f64 / 1000.0,
        })
        .to_string())
    }

    /// The API server's write: an update only of a key that exists, a create only of one that
    /// does not.
    fn guarded_put(key: String, value: String, update: bool) -> Txn {
        let guard = if update {
            Compare::version(key.clone(), CompareOp::Greater, 0)
        } else {
            Compare::create_revision(key.clone(), CompareOp::Equal, 0)
        };
        Txn::new().when([guard]).and_then([TxnOp::put(key.clone(), value, None)]).or_else([TxnOp::get(key, None)])
    }
}
