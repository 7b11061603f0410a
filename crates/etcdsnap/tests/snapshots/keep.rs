//! Retention by age (restic's `forget` rules) end to end: 40 scheduled snapshots over 120 days,
//! taken by the real binary with its clock moved back (`ETCDSNAP_FAKE_CLOCK_OFFSET`), locally
//! and in a real S3 server; each rule's dry run keeps exactly what restic's rules, restated
//! here by grouping, keep; a real prune leaves exactly that in both stores and on-demand
//! snapshots untouched.

use crate::common::etcd::etcd_with_objects;
use crate::common::{TestResult, files_in, run, s};
use etcdsnap_storage::clock::FAKE_OFFSET_ENV;
use std::collections::{BTreeMap, BTreeSet};
use testenv::S3Server;

const BUCKET: &str = "keep";
const NODE: &str = "n1";
const BASE: &str = "etcd-snapshot";

/// Hours before now of each scheduled snapshot, oldest first: irregular gaps (an agent down for
/// days, several an hour at times) spanning 120 days.
fn schedule_hours_ago() -> Vec<i64> {
    let gaps = [1, 5, 23, 71, 150, 26, 49, 97];
    let mut at = Vec::new();
    let mut h = 0;
    for i in 0..40 {
        at.push(h);
        h += gaps[i % gaps.len()];
    }
    let span = at[39];
    assert!(span <= 120 * 24, "the history spans at most 120 days");
    at.into_iter().map(|h| span - h).collect()
}

/// The unix time in a scheduled snapshot's name.
fn time_of(name: &str) -> jiff::Timestamp {
    let secs = name.rsplit('-').next().and_then(|t| t.parse().ok()).expect("a time in the name");
    jiff::Timestamp::from_second(secs).expect("a valid time")
}

/// restic's counted rule restated by grouping: the newest snapshot of each of the `n` newest
/// UTC buckets, and the oldest snapshot as well when there are fewer than `n` buckets.
fn by_grouping(names: &[String], n: usize, bucket: &str) -> BTreeSet<String> {
    let mut newest_first: Vec<&String> = names.iter().collect();
    newest_first.sort_by_key(|n| std::cmp::Reverse(time_of(n)));
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut keep = BTreeSet::new();
    for name in &newest_first {
        let utc = time_of(name).to_zoned(jiff::tz::TimeZone::UTC);
        let key = match bucket {
            "hourly" => utc.strftime("%Y-%m-%d %H").to_string(),
            "daily" => utc.strftime("%Y-%m-%d").to_string(),
            "weekly" => format!("{:?}", (utc.date().iso_week_date().year(), utc.date().iso_week_date().week())),
            "monthly" => utc.strftime("%Y-%m").to_string(),
            "last" => name.to_string(),
            other => panic!("no bucket {other}"),
        };
        if seen.len() < n && seen.insert(key, ()).is_none() {
            keep.insert(name.to_string());
        }
    }
    if seen.len() < n
        && let Some(oldest) = newest_first.last()
    {
        keep.insert(oldest.to_string());
    }
    keep
}

/// Every snapshot taken strictly after the newest one minus `days`.
fn within_days(names: &[String], days: i64) -> BTreeSet<String> {
    let newest = names.iter().map(|n| time_of(n)).max().expect("snapshots");
    let cutoff = newest.checked_sub(jiff::SignedDuration::from_hours(24 * days)).expect("in range");
    names.iter().filter(|n| time_of(n) > cutoff).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_snapshots_over_120_days_keep_exactly_what_restic_s_rules_keep_locally_and_in_s3() -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    let mut env: Vec<(String, String)> = vec![
        ("ETCDSNAP_ENDPOINTS".into(), etcd.endpoints().join(",")),
        ("ETCDSNAP_NODE_NAME".into(), NODE.into()),
        ("ETCDSNAP_DATA_DIR".into(), s(data.path())),
        ("ETCDSNAP_CLUSTER_ID".into(), "c1".into()),
        ("ETCDSNAP_S3_FOLDER".into(), "f".into()),
    ];
    env.extend(s3.etcdsnap_env(BUCKET));
    let env_at = |hours_ago: i64| {
        let mut e: Vec<(String, String)> = env.clone();
        e.push((FAKE_OFFSET_ENV.into(), (-hours_ago * 3600).to_string()));
        e
    };
    let run_at = |args: Vec<&'static str>, hours_ago: i64| {
        let e = env_at(hours_ago);
        async move {
            let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run(&args, &pairs).await
        }
    };
    for hours_ago in schedule_hours_ago() {
        run_at(vec!["save", "--name", BASE, "--no-kube"], hours_ago).await.expect_ok();
    }
    // Two on-demand snapshots, one old and one new: no rule of --name etcd-snapshot touches them.
    run_at(vec!["save", "--no-kube"], 100 * 24).await.expect_ok();
    run_at(vec!["save", "--no-kube"], 0).await.expect_ok();
    let dir = data.path().join("snapshots");
    let scheduled: Vec<String> = files_in(&dir).into_iter().filter(|n| n.starts_with(BASE)).collect();
    assert_eq!(scheduled.len(), 40, "{scheduled:?}");
    let on_demand: BTreeSet<String> = files_in(&dir).into_iter().filter(|n| n.starts_with("on-demand-")).collect();
    assert_eq!(on_demand.len(), 2);

    let cases: Vec<(Vec<&'static str>, BTreeSet<String>)> = vec![
        (vec!["--keep-last", "4"], by_grouping(&scheduled, 4, "last")),
        (vec!["--keep-hourly", "3"], by_grouping(&scheduled, 3, "hourly")),
        (vec!["--keep-daily", "7"], by_grouping(&scheduled, 7, "daily")),
        (vec!["--keep-weekly", "5"], by_grouping(&scheduled, 5, "weekly")),
        (vec!["--keep-monthly", "3"], by_grouping(&scheduled, 3, "monthly")),
        (vec!["--keep-monthly", "12"], by_grouping(&scheduled, 12, "monthly")),
        (vec!["--keep-within", "10d"], within_days(&scheduled, 10)),
        // No rule: everything is kept, as `--retention 0` always did.
        (vec!["--keep-last", "0"], scheduled.iter().cloned().collect()),
    ];
    for (rule, expected) in &cases {
        let mut args = vec!["prune", "--name", BASE, "--no-kube", "--dry-run", "-o", "json"];
        args.extend(rule.iter().copied());
        let out = run_at(args, 0).await.expect_ok();
        let view = out.json();
        let stores = view["stores"].as_array().ok_or("no stores")?;
        assert_eq!(stores.len(), 2, "local and S3: {view}");
        for store in stores {
            let kept: BTreeSet<String> = store["kept"]
                .as_array()
                .ok_or("no kept")?
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            assert_eq!(&kept, expected, "{rule:?} in {}", store["store"]);
            let because = store["keptBecause"].as_object().ok_or("no reasons")?;
            assert_eq!(because.len(), kept.len(), "a reason for each kept snapshot: {store}");
            let removed = store["removed"].as_array().ok_or("no removed")?.len();
            assert_eq!(kept.len() + removed, 40, "{rule:?}: every scheduled snapshot counted once: {store}");
        }
    }
    assert_eq!(files_in(&dir).len(), 42, "a dry run removed something");

    // A real prune with rules combined: their union stays, in both stores, and nothing else.
    let rules = ["--keep-last", "2", "--keep-weekly", "4", "--keep-monthly", "6"];
    let expected: BTreeSet<String> = [
        by_grouping(&scheduled, 2, "last"),
        by_grouping(&scheduled, 4, "weekly"),
        by_grouping(&scheduled, 6, "monthly"),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(expected.len() < 12 && expected.len() > 4, "a test that can tell rules apart: {expected:?}");
    let mut args = vec!["prune", "--name", BASE, "--no-kube"];
    args.extend(rules);
    run_at(args, 0).await.expect_ok();
    let local: BTreeSet<String> = files_in(&dir).into_iter().collect();
    let remote: BTreeSet<String> =
        s3.list_keys(BUCKET, "f/").await?.into_iter().filter_map(|k| k.strip_prefix("f/").map(String::from)).collect();
    let remote: BTreeSet<String> = remote.into_iter().filter(|k| !k.starts_with(".metadata/")).collect();
    let want: BTreeSet<String> = expected.iter().cloned().chain(on_demand.iter().cloned()).collect();
    assert_eq!(local, want, "local");
    assert_eq!(remote, want, "S3");
    Ok(())
}
