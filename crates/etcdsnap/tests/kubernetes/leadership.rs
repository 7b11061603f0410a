//! Leadership that cannot split: a leader paused past its Lease (SIGSTOP) in the middle of a long
//! pass while another node takes over, the same with the paused leader's clock 10 minutes
//! ahead, and a leader stopped right before it keeps an S3 drill's result or annotates how far
//! point-in-time recovery rolls forward. The judge is the API server's audit log (and S3's
//! access log): after the takeover, no leader-only write carries the old leader's identity, even
//! once it runs again with its work half done. Then one node name, one agent: a second agent
//! with the same node name is refused.

use crate::agent_user;
use crate::common::agent::Agent;
use crate::common::cluster::{BUCKET, LEASE, leader_lease, start_agent, wait_until};
use crate::common::etcd::etcd_with_objects;
use crate::common::{TestResult, files_in, s};
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_api::consts::{ANNOTATION_DRILL, ANNOTATION_ROLLS_FORWARD_TO, RECORD_SUFFIX};
use etcdsnap_storage::failpoint;
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;
use std::path::Path;
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

/// The node holding the leader Lease as written, fresh or not.
async fn lease_holder(client: &kube::Client) -> Option<String> {
    let holder = leader_lease(client).await?.holder_identity.filter(|h| !h.is_empty())?;
    Some(etcdsnap_kube::leader::holder_node(&holder).to_string())
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

/// alpha leads with bravo beside it, `point` armed in alpha with a short hold; the moment alpha
/// announces the point it is stopped (SIGSTOP) until bravo took the Lease over, then it runs
/// again and goes on from the point: whatever it would write there, it tries to write now.
/// Returns both agents, still running, and the index in the audit log of bravo's first Lease
/// write.
async fn stop_leader_at(
    point: &str,
    api: &KubeApiServer,
    endpoint: &str,
    s3: Option<&S3Server>,
    dirs: &[tempfile::TempDir],
    alpha_extra: &[&str],
    bravo_extra: &[&str],
) -> Result<(Agent, Agent, usize), Box<dyn std::error::Error>> {
    let client = api.client().await?;
    let armed = format!("{point}=4000");
    let env = [(failpoint::ENV, armed.as_str())];
    let alpha = start_agent("alpha", endpoint, dirs[0].path(), api, s3, alpha_extra, &env).await?;
    wait_until("alpha leads", Duration::from_secs(30), async || {
        lease_holder(&client).await.as_deref() == Some("alpha")
    })
    .await
    .map_err(|e| format!("{e}\n{}", alpha.log_text()))?;
    let bravo = start_agent("bravo", endpoint, dirs[1].path(), api, s3, bravo_extra, &[]).await?;
    let announced = format!("failpoint {point} reached");
    wait_until("alpha reaches the point", Duration::from_secs(90), async || alpha.log_text().contains(&announced))
        .await
        .map_err(|e| format!("{e}\nalpha:\n{}", alpha.log_text()))?;
    alpha.signal("-STOP")?;
    assert_eq!(lease_holder(&client).await.as_deref(), Some("alpha"), "alpha was no leader when it stopped");
    let takeover =
        wait_until("bravo takes over", LEASE * 3, async || lease_holder(&client).await.as_deref() == Some("bravo"))
            .await;
    if let Err(e) = takeover {
        alpha.signal("-CONT")?;
        return Err(format!("{e}\nbravo:\n{}", bravo.log_text()).into());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    alpha.signal("-CONT")?;
    // alpha's hold at the point is long over: it goes on at once.
    tokio::time::sleep(LEASE).await;
    let bravo_user = agent_user("bravo");
    let took_over = api
        .audit_events()?
        .iter()
        .position(|e| e.user == bravo_user && e.name == "etcdsnap-leader" && e.is_write() && e.code < 300)
        .ok_or("no Lease write by bravo in the audit log")?;
    Ok((alpha, bravo, took_over))
}

/// alpha's requests after bravo's takeover that only a leader may make: those of
/// [`leader_only`], and patches of resources (drill results, roll-forward annotations: alpha
/// drills nothing of its own in these tests).
fn alpha_leader_writes_after(
    events: &[AuditEvent],
    took_over: usize,
    patched: impl Fn(&str) -> bool,
) -> Vec<&AuditEvent> {
    let alpha_user = agent_user("alpha");
    events[took_over + 1..]
        .iter()
        .filter(|e| e.user == alpha_user)
        .filter(|e| {
            leader_only(e, "bravo") || (e.resource == "etcdsnapshotfiles" && e.verb == "patch" && patched(&e.name))
        })
        .collect()
}

async fn resources(api: &KubeApiServer) -> Result<Vec<ETCDSnapshotFile>, Box<dyn std::error::Error>> {
    let crs: Api<ETCDSnapshotFile> = Api::all(api.client().await?);
    Ok(crs.list(&ListParams::default()).await?.items)
}

/// A leader's drill of an S3 snapshot ends while it is stopped past its Lease: running again, it
/// keeps none of the result (no S3 record rewritten, no resource annotated), and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_before_keeping_an_s3_drill_s_result_keeps_nothing_after_the_takeover() -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    let api = KubeApiServer::start(&etcd).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let etcdutl = s(&testenv::testbin_version("etcdutl", "3.7")?);
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let drills = ["--drill-schedule", "*/5 * * * * *", "--etcdutl", &etcdutl];
    let no_drills = ["--drill-schedule", ""];
    let endpoint = &etcd.endpoints()[0];
    let (alpha, bravo, took_over) =
        stop_leader_at(failpoint::S3_DRILL_RESULT, &api, endpoint, Some(&s3), &dirs, &drills, &no_drills).await?;

    let log = alpha.log_text();
    assert!(log.contains("the drill's result is not kept: not the leader any more"), "alpha:\n{log}");
    // Every record in S3 was put once, by the save that made its snapshot: none was rewritten.
    let mut puts: BTreeMap<String, usize> = BTreeMap::new();
    for r in s3.requests().into_iter().filter(|r| r.operation == "PutObject" && r.status < 300) {
        if r.key.ends_with(RECORD_SUFFIX) {
            *puts.entry(r.key).or_default() += 1;
        }
    }
    assert!(!puts.is_empty(), "no record was put at all: S3's access log is not what this test reads");
    let rewritten: Vec<_> = puts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(rewritten.is_empty(), "S3 records rewritten: {rewritten:?}\nalpha:\n{log}");
    let events = api.audit_events()?;
    let violations = alpha_leader_writes_after(&events, took_over, |name| name.starts_with("s3-"));
    assert!(violations.is_empty(), "alpha wrote after bravo took over: {violations:#?}\nalpha:\n{log}");
    // alpha's drills of its own local snapshots are its node's duty, and kept; no S3 one is.
    let all = resources(&api).await?;
    let s3_resources: Vec<&ETCDSnapshotFile> = all.iter().filter(|c| c.spec.s3.is_some()).collect();
    assert!(!s3_resources.is_empty(), "no S3 resource at all: {all:?}");
    let drilled: Vec<&str> = s3_resources
        .iter()
        .filter(|c| c.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ANNOTATION_DRILL)))
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    assert!(drilled.is_empty(), "S3 resources with a drill result: {drilled:?}");
    bravo.stop().await?;
    alpha.stop().await?;
    Ok(())
}

/// A leader capturing deltas is stopped past its Lease right before it says on a resource how
/// far point-in-time recovery rolls forward: running again, it writes no annotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_before_its_roll_forward_annotation_writes_none_after_the_takeover() -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    let api = KubeApiServer::start(&etcd).await?;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let capture = ["--deltas", "--delta-interval", "1s", "--drill-schedule", ""];
    let endpoint = &etcd.endpoints()[0];
    let (alpha, bravo, took_over) = stop_leader_at(
        failpoint::ROLL_FORWARD_ANNOTATION,
        &api,
        endpoint,
        None,
        &dirs,
        &capture,
        &["--drill-schedule", ""],
    )
    .await?;

    let log = alpha.log_text();
    assert!(log.contains("roll-forward annotation not written: not the leader any more"), "alpha:\n{log}");
    let events = api.audit_events()?;
    let violations = alpha_leader_writes_after(&events, took_over, |_| true);
    assert!(violations.is_empty(), "alpha wrote after bravo took over: {violations:#?}\nalpha:\n{log}");
    let annotated: Vec<String> = resources(&api)
        .await?
        .into_iter()
        .filter(|c| c.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ANNOTATION_ROLLS_FORWARD_TO)))
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(annotated.is_empty(), "resources annotated: {annotated:?}\nalpha:\n{log}");
    bravo.stop().await?;
    alpha.stop().await?;
    Ok(())
}

/// The snapshots an agent published in `dir`.
fn saved(dir: &Path) -> Vec<String> {
    files_in(&dir.join("snapshots"))
}

/// The leader Lease's holder as written, whole (`<node>/<instance>`).
async fn leader_identity(client: &kube::Client) -> Option<String> {
    leader_lease(client).await?.holder_identity.filter(|h| !h.is_empty())
}

/// One node name, one agent. A second agent with alpha's node name is refused while the first
/// runs, having saved nothing. One started while the first is stopped (SIGSTOP: alive, not
/// renewing) takes the node over once its Lease ran out, and the first, running again, stops
/// and says why. One started right after the holder was killed takes over at once: the holder
/// was a process of this machine that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_the_same_node_name_is_refused_and_a_stopped_one_gives_way() -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    let api = KubeApiServer::start(&etcd).await?;
    let client = api.client().await?;
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let endpoint = &etcd.endpoints()[0];
    let first = start_agent("alpha", endpoint, dirs[0].path(), &api, None, &[], &[]).await?;
    wait_until("the first agent leads", Duration::from_secs(30), async || {
        lease_holder(&client).await.as_deref() == Some("alpha")
    })
    .await
    .map_err(|e| format!("{e}\n{}", first.log_text()))?;
    let leading = leader_identity(&client).await.ok_or("no leader")?;

    let second = start_agent("alpha", endpoint, dirs[1].path(), &api, None, &[], &[]).await?;
    let (status, log) = second.exit_status(LEASE * 3).await?;
    assert!(!status.success(), "the second agent ran:\n{log}");
    for needle in ["another etcdsnap agent runs with node name alpha", "etcdsnap/etcdsnap-agent-alpha", "--node-name"] {
        assert!(log.contains(needle), "{needle:?} not said:\n{log}");
    }
    assert!(saved(dirs[1].path()).is_empty(), "the refused agent saved: {:?}", saved(dirs[1].path()));
    assert_eq!(leader_identity(&client).await, Some(leading.clone()), "the leader changed");
    wait_until("the first agent saves", LEASE * 2, async || !saved(dirs[0].path()).is_empty())
        .await
        .map_err(|e| format!("{e}\n{}", first.log_text()))?;

    first.signal("-STOP")?;
    let stopped = Instant::now();
    let third = start_agent("alpha", endpoint, dirs[2].path(), &api, None, &[], &[]).await?;
    wait_until("the third agent saves", LEASE * 4, async || !saved(dirs[2].path()).is_empty())
        .await
        .map_err(|e| format!("{e}\n{}", third.log_text()))?;
    assert!(stopped.elapsed() >= LEASE, "the third agent did not wait out the stopped one's Lease");
    first.signal("-CONT")?;
    let (status, log) = first.exit_status(Duration::from_secs(30)).await?;
    assert!(!status.success(), "the first agent went on after another took its node over:\n{log}");
    assert!(log.contains("another etcdsnap agent took over node name alpha"), "{log}");
    wait_until("the third agent leads", LEASE * 3, async || {
        leader_identity(&client).await.is_some_and(|h| h.starts_with("alpha/") && h != leading)
    })
    .await?;

    third.kill().await?;
    let killed = Instant::now();
    let fourth = start_agent("alpha", endpoint, dirs[3].path(), &api, None, &[], &[]).await?;
    wait_until("the fourth agent saves", LEASE * 2, async || !saved(dirs[3].path()).is_empty())
        .await
        .map_err(|e| format!("{e}\n{}", fourth.log_text()))?;
    let log = fourth.log_text();
    assert!(
        log.contains("the holder's process is gone from this machine: taking its lease over at once"),
        "the fourth agent waited for a dead holder's Lease:\n{log}"
    );
    assert!(killed.elapsed() < LEASE + Duration::from_secs(5), "{:?}", killed.elapsed());
    fourth.stop().await?;
    Ok(())
}
