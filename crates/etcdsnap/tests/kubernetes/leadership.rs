//! Leadership that cannot split: a leader paused past its Lease (SIGSTOP) in the middle of a long
//! pass while another node takes over, and the same with the paused leader's clock 10 minutes
//! ahead. The judge is the API server's audit log: after the takeover, no leader-only write
//! carries the old leader's identity, even once it runs again with its pass half done.

use crate::agent_user;
use crate::common::TestResult;
use crate::common::cluster::{BUCKET, LEASE, leader_lease, start_agent, wait_until};
use crate::common::etcd::etcd_with_objects;
use std::time::{Duration, Instant};
use testenv::{AuditEvent, KubeApiServer, S3Server};

/// S3 objects no agent saved (`testenv::fill_snapshot_objects` names them after nodes
/// `node0`..`node2`): only a leader's reconcile writes their resources, and creating 1,500 of
/// them makes the pass long enough to be paused in.
const PLANTED: usize = 1500;
const FOLDER: &str = "shared";

fn is_planted(e: &AuditEvent) -> bool {
    e.resource == "etcdsnapshotfiles" && e.name.starts_with("s3-etcd-snapshot-node")
}

/// Writes only the leader may make: the leader Lease (successful ones: a refused attempt is
/// the election working), the legacy ConfigMap, the resources of S3 snapshots no agent saved,
/// and deleting another node's resources.
fn leader_only(e: &AuditEvent, other_node: &str) -> bool {
    let lease = e.resource == "leases" && e.name == "etcdsnap-leader" && e.code < 300;
    let configmap = e.resource == "configmaps" && e.name == "k3s-etcd-snapshots";
    let others = e.resource == "etcdsnapshotfiles" && e.verb == "delete" && e.name.contains(other_node);
    e.is_write() && (lease || configmap || is_planted(e) || others)
}

/// The holder of the leader Lease as written, fresh or not.
async fn lease_holder(client: &kube::Client) -> Option<String> {
    leader_lease(client).await?.holder_identity.filter(|h| !h.is_empty())
}

/// alpha leads with bravo beside it; alpha is paused longer than the Lease, bravo takes over,
/// alpha resumes. `alpha_env` sets alpha's environment (its clock).
async fn paused_leader_never_writes_after_the_takeover(alpha_env: &[(&str, &str)]) -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    let api = KubeApiServer::start(&etcd).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let (url, access, secret) = (s3.url(), s3.access_key().to_string(), s3.secret_key().to_string());
    testenv::fill_snapshot_objects(&url, BUCKET, FOLDER, PLANTED, &access, &secret).await?;
    let client = api.client().await?;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let extra = ["--reconcile-interval", "2s", "--s3-folder", FOLDER];
    let endpoint = &etcd.endpoints()[0];
    let alpha = start_agent("alpha", endpoint, dirs[0].path(), &api, Some(&s3), &extra, alpha_env).await?;
    wait_until("alpha leads", Duration::from_secs(30), async || {
        lease_holder(&client).await.as_deref() == Some("alpha")
    })
    .await
    .map_err(|e| format!("{e}\n{}", alpha.log_text()))?;
    let bravo = start_agent("bravo", endpoint, dirs[1].path(), &api, Some(&s3), &extra, &[]).await?;

    // alpha's first pass as the leader creates the planted objects' resources: pause it in the
    // middle of that, at a random point, for well over the Lease.
    let alpha_user = agent_user("alpha");
    let bravo_user = agent_user("bravo");
    let planted_by = |events: &[AuditEvent], user: &str| {
        events.iter().filter(|e| e.user == user && is_planted(e) && e.is_write()).count()
    };
    let pause_after = rand::random_range(20..200);
    wait_until("alpha creates the planted objects' resources", Duration::from_secs(60), async || {
        planted_by(&api.audit_events().unwrap_or_default(), &alpha_user) >= pause_after
    })
    .await
    .map_err(|e| format!("{e}\nalpha:\n{}", alpha.log_text()))?;
    alpha.signal("-STOP")?;
    let written_before = planted_by(&api.audit_events()?, &alpha_user);
    assert!(written_before < PLANTED, "alpha's pass was over before the pause: {written_before} written");
    let paused = Instant::now();
    let takeover =
        wait_until("bravo takes over", LEASE * 3, async || lease_holder(&client).await.as_deref() == Some("bravo"))
            .await;
    if let Err(e) = takeover {
        alpha.signal("-CONT")?;
        return Err(format!("{e}\nbravo:\n{}", bravo.log_text()).into());
    }
    eprintln!("bravo took over {:?} after alpha was paused", paused.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    alpha.signal("-CONT")?;
    // alpha runs again: its timers fire, its watch delivers what it missed, its requests go out.
    tokio::time::sleep(LEASE + Duration::from_secs(4)).await;
    assert_eq!(lease_holder(&client).await.as_deref(), Some("bravo"), "alpha took the Lease back");

    let events = api.audit_events()?;
    let took_over = events
        .iter()
        .position(|e| e.user == bravo_user && e.name == "etcdsnap-leader" && e.is_write() && e.code < 300)
        .ok_or("no Lease write by bravo in the audit log")?;
    let after: Vec<&AuditEvent> = events[took_over + 1..].iter().filter(|e| e.user == alpha_user).collect();
    assert!(!after.is_empty(), "alpha made no request after it resumed:\n{}", alpha.log_text());
    let violations: Vec<&&AuditEvent> = after.iter().filter(|e| leader_only(e, "bravo")).collect();
    assert!(
        violations.is_empty(),
        "alpha made leader-only writes after bravo took over: {violations:#?}\nalpha:\n{}",
        alpha.log_text()
    );
    assert!(planted_by(&events[took_over..], &bravo_user) > 0, "bravo never did the leader's duties");
    assert!(
        alpha.log_text().contains("no longer the leader"),
        "alpha did not say it stopped leading:\n{}",
        alpha.log_text()
    );
    // alpha still does its own node's duties: its saves go on and get their resources.
    assert!(
        after.iter().any(|e| e.resource == "etcdsnapshotfiles" && e.verb == "create" && e.code < 300),
        "alpha wrote no resource of its own after it resumed:\n{}",
        alpha.log_text()
    );
    bravo.stop().await?;
    alpha.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_of_the_leader_s_after_the_takeover() -> TestResult {
    paused_leader_never_writes_after_the_takeover(&[]).await
}

/// The paused leader's clock is 10 minutes ahead: to it, every renewal bravo stamps looks 10
/// minutes stale. Judging expiry by the stamps would hand the Lease back to it the moment it
/// resumes; judging it by observed change does not. The binary honours the fake clock only in
/// builds with failpoints (`make test` has them).
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_its_clock_10_minutes_ahead_cannot_take_the_lease_back() -> TestResult {
    paused_leader_never_writes_after_the_takeover(&[(etcdsnap_storage::clock::FAKE_OFFSET_ENV, "600")]).await
}
