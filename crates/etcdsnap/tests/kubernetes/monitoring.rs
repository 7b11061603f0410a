//! deploy/monitoring: the alert rules pass promtool's checks and unit tests, the
//! PrometheusRule holds the same rules, the dashboard's queries are valid PromQL, and every
//! metric the rules and the dashboard read exists on a real agent's /metrics (an agent that
//! saved to disk and S3, led, kept the legacy ConfigMap and ran a drill).

use crate::common::TestResult;
use crate::common::agent::metric;
use crate::common::cluster::{BUCKET, start_agent};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testenv::{Etcd, KubeApiServer, S3Server};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring")
}

fn promtool(args: &[&str], dir: &Path) -> std::process::Output {
    let bin = testenv::testbin("promtool").expect("promtool is built by `make testbins`");
    std::process::Command::new(bin).args(args).current_dir(dir).output().expect("promtool runs")
}

fn assert_success(out: &std::process::Output, what: &str) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
}

fn yaml(path: &Path) -> serde_norway::Value {
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every `expr` of the rule file's groups.
fn rule_exprs(groups: &serde_norway::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for group in groups.as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_string());
        }
    }
    exprs
}

fn alert_names(groups: &serde_norway::Value) -> BTreeSet<String> {
    let rules = groups.as_sequence().unwrap().iter().flat_map(|g| g["rules"].as_sequence().unwrap().iter());
    rules.filter_map(|r| r["alert"].as_str().map(str::to_string)).collect()
}

/// Every query of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(monitoring_dir().join("dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

/// The `etcdsnap_...` metric names a PromQL expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("etcdsnap_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Whether the exposition has a sample of `name` (any labels).
fn exposed(body: &str, name: &str) -> bool {
    body.lines().any(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
}

#[test]
fn metric_names_are_read_from_expressions() {
    let names = metric_names("sum(rate(etcdsnap_a_total[5m])) / on(x) etcdsnap_b{l=\"etcdsnap\"} and etcdsnap_c");
    assert_eq!(names, BTreeSet::from(["etcdsnap_a_total".into(), "etcdsnap_b".into(), "etcdsnap_c".into()]));
    assert!(exposed("etcdsnap_a_total{x=\"1\"} 2\n", "etcdsnap_a_total"));
    assert!(!exposed("etcdsnap_a_total_more 2\n", "etcdsnap_a_total"));
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let dir = monitoring_dir();
    assert_success(&promtool(&["check", "rules", "rules.yaml"], &dir), "promtool check rules");
    assert_success(&promtool(&["test", "rules", "tests.yaml"], &dir), "promtool test rules");
}

#[test]
fn every_alert_has_unit_tests_that_expect_it_to_fire() {
    let dir = monitoring_dir();
    let alerts = alert_names(&yaml(&dir.join("rules.yaml"))["groups"]);
    let tests = yaml(&dir.join("tests.yaml"));
    let mut fired = BTreeSet::new();
    for test in tests["tests"].as_sequence().unwrap() {
        for case in test["alert_rule_test"].as_sequence().unwrap() {
            let expects = case["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty());
            if expects {
                fired.insert(case["alertname"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(alerts, fired, "alerts without a firing unit test (or tests of unknown alerts)");
    assert!(alerts.len() >= 6, "{alerts:?}");
}

#[test]
fn the_prometheus_rule_holds_the_same_rules() {
    let dir = monitoring_dir();
    let rule = yaml(&dir.join("prometheusrule.yaml"));
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(rule["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(rule["spec"]["groups"], yaml(&dir.join("rules.yaml"))["groups"], "prometheusrule.yaml != rules.yaml");
}

/// promtool parses each dashboard query as the expression of a recording rule.
#[test]
fn dashboard_queries_are_valid_promql() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard-rules.yaml"), file.to_string()).unwrap();
    assert_success(&promtool(&["check", "rules", "dashboard-rules.yaml"], dir.path()), "dashboard queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_read_exists_on_a_real_agent() -> TestResult {
    let dir = monitoring_dir();
    let mut wanted = BTreeSet::new();
    for expr in rule_exprs(&yaml(&dir.join("rules.yaml"))["groups"]).iter().chain(dashboard_exprs().iter()) {
        wanted.extend(metric_names(expr));
    }
    assert!(wanted.len() >= 15, "{wanted:?}");

    let etcd = Etcd::single().await?;
    let api = KubeApiServer::start(&etcd).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    let etcdutl = testenv::testbin_version("etcdutl", "3.7")?;
    let etcdutl = etcdutl.to_string_lossy();
    // A replica in a directory, so that the replica gauges have a series.
    let replica = tempfile::tempdir()?;
    let replica_url = format!("file://{}", replica.path().display());
    let extra = [
        "--drill-schedule",
        "*/5 * * * * *",
        "--etcdutl",
        &etcdutl,
        "--reconcile-interval",
        "3s",
        "--replica",
        &replica_url,
    ];
    let agent = start_agent("node-m", &etcd.endpoints()[0], data.path(), &api, Some(&s3), &extra, &[]).await?;

    // Until the agent has saved to both locations, led, synced the legacy ConfigMap, drilled and
    // copied to its replica.
    let worked = |body: &str, _| {
        metric(body, "etcdsnap_saves_total{status=\"success\"}").is_some_and(|n| n >= 1.0)
            && metric(body, "etcdsnap_drills_total{result=\"passed\"}").is_some_and(|n| n >= 1.0)
            && metric(body, "etcdsnap_leader") == Some(1.0)
            && metric(body, "etcdsnap_legacy_configmap_entries").is_some_and(|n| n >= 1.0)
            && metric(body, &format!("etcdsnap_replica_behind_snapshots{{replica=\"{replica_url}\"}}")) == Some(0.0)
    };
    let body = agent
        .wait_for("/metrics", worked, Duration::from_secs(90))
        .await
        .map_err(|e| format!("the agent did not do its work in time: {e}"))?;
    let missing: Vec<&String> = wanted.iter().filter(|name| !exposed(&body, name)).collect();
    assert!(
        missing.is_empty(),
        "metrics the rules or dashboard read but the agent does not expose: {missing:?}\n{body}"
    );
    // The gauges hold what happened, not defaults.
    assert_eq!(metric(&body, "etcdsnap_last_save_succeeded"), Some(1.0), "{body}");
    assert_eq!(metric(&body, "etcdsnap_last_drill_passed"), Some(1.0), "{body}");
    assert_eq!(metric(&body, "etcdsnap_schedule_interval_seconds"), Some(3.0), "{body}");
    assert_eq!(metric(&body, "etcdsnap_legacy_configmap_max_bytes"), Some(900_000.0), "{body}");
    assert!(metric(&body, "etcdsnap_legacy_configmap_bytes").is_some_and(|b| b > 0.0), "{body}");
    assert!(body.contains("etcdsnap_agent_info{node=\"node-m\""), "{body}");
    agent.stop().await?;
    Ok(())
}
