//! The keep rules against hand-worked cases and against a second, grouping formulation of
//! restic's rules over a long irregular history.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

fn t(s: &str) -> Timestamp {
    format!("{s}Z").parse().unwrap()
}

/// Times newest first.
fn newest_first(v: &[&str]) -> Vec<Timestamp> {
    let mut v: Vec<Timestamp> = v.iter().map(|s| t(s)).collect();
    v.sort_by(|a, b| b.cmp(a));
    v
}

/// The positions kept.
fn kept(policy: &KeepPolicy, times: &[Timestamp]) -> Vec<usize> {
    policy.apply(times).iter().enumerate().filter(|(_, r)| !r.is_empty()).map(|(i, _)| i).collect()
}

fn reasons(policy: &KeepPolicy, times: &[Timestamp]) -> Vec<String> {
    policy.apply(times).iter().map(|r| r.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")).collect()
}

#[test]
fn last_keeps_the_newest() {
    let times = newest_first(&["2024-01-01T00:00:00", "2024-01-01T01:00:00", "2024-01-01T02:00:00"]);
    assert_eq!(kept(&KeepPolicy::last(2), &times), [0, 1]);
    assert_eq!(kept(&KeepPolicy::last(5), &times), [0, 1, 2]);
    assert_eq!(reasons(&KeepPolicy::last(2), &times), ["last snapshot", "last snapshot", ""]);
}

#[test]
fn no_rule_keeps_everything_and_says_so() {
    let p = KeepPolicy::default();
    assert!(p.is_empty());
    assert_eq!(p.to_string(), "everything");
    assert!(KeepPolicy { within: Some(CalendarSpan::default()), ..p }.is_empty());
    assert!(!KeepPolicy::last(1).is_empty());
}

#[test]
fn daily_keeps_the_newest_of_each_day_that_has_one() {
    // The restic forum's example: nothing on the 3rd, two on the 2nd.
    let times = newest_first(&[
        "2024-05-01T08:00:00",
        "2024-05-02T08:00:00",
        "2024-05-02T11:00:00",
        "2024-05-04T09:00:00",
        "2024-05-05T10:00:00",
    ]);
    let p = KeepPolicy { daily: 4, ..Default::default() };
    // Newest first: 05, 04, 02 11:00, 02 08:00, 01.
    assert_eq!(kept(&p, &times), [0, 1, 2, 4]);
    let p = KeepPolicy { daily: 2, ..Default::default() };
    assert_eq!(kept(&p, &times), [0, 1]);
}

#[test]
fn a_rule_with_counts_left_keeps_the_oldest_too() {
    let times = newest_first(&["2024-05-02T08:00:00", "2024-05-02T09:00:00", "2024-05-02T10:00:00"]);
    let p = KeepPolicy { daily: 7, ..Default::default() };
    assert_eq!(reasons(&p, &times), ["daily snapshot", "", "oldest daily snapshot"]);
    // With no count left, the oldest goes.
    let p = KeepPolicy { daily: 1, ..Default::default() };
    assert_eq!(kept(&p, &times), [0]);
    // The oldest in a new bucket is kept for that bucket, not as "oldest".
    let times = newest_first(&["2024-05-02T08:00:00", "2024-05-03T09:00:00"]);
    let p = KeepPolicy { daily: 7, ..Default::default() };
    assert_eq!(reasons(&p, &times), ["daily snapshot", "daily snapshot"]);
}

#[test]
fn buckets_are_utc_calendar_hours_days_weeks_months_years() {
    // 23:30 and 00:30 are different days in UTC whatever the machine's zone.
    let times = newest_first(&["2024-05-01T23:30:00", "2024-05-02T00:30:00"]);
    assert_eq!(kept(&KeepPolicy { daily: 2, ..Default::default() }, &times), [0, 1]);
    assert_eq!(kept(&KeepPolicy { hourly: 1, ..Default::default() }, &times), [0]);
    let times = newest_first(&["2024-05-01T10:05:00", "2024-05-01T10:55:00", "2024-05-01T11:00:00"]);
    assert_eq!(kept(&KeepPolicy { hourly: 2, ..Default::default() }, &times), [0, 1]);
    let times = newest_first(&["2024-04-30T23:00:00", "2024-05-01T01:00:00", "2024-05-31T00:00:00"]);
    assert_eq!(kept(&KeepPolicy { monthly: 2, ..Default::default() }, &times), [0, 2]);
    let times = newest_first(&["2023-12-31T23:00:00", "2024-01-01T00:00:00", "2024-06-01T00:00:00"]);
    assert_eq!(kept(&KeepPolicy { yearly: 2, ..Default::default() }, &times), [0, 2]);
}

#[test]
fn weeks_are_iso_weeks_monday_to_sunday_across_the_new_year() {
    // 2020-12-31 (Thursday) and 2021-01-03 (Sunday) are both in ISO week 53 of 2020;
    // 2021-01-04 (Monday) starts week 1 of 2021.
    let times = newest_first(&["2020-12-31T12:00:00", "2021-01-03T12:00:00", "2021-01-04T00:00:00"]);
    let p = KeepPolicy { weekly: 2, ..Default::default() };
    assert_eq!(kept(&p, &times), [0, 1]);
    let p = KeepPolicy { weekly: 1, ..Default::default() };
    assert_eq!(kept(&p, &times), [0]);
    // Sunday 23:59 and Monday 00:00 are different weeks.
    let times = newest_first(&["2024-05-05T23:59:00", "2024-05-06T00:00:00"]);
    assert_eq!(kept(&KeepPolicy { weekly: 2, ..Default::default() }, &times), [0, 1]);
}

#[test]
fn within_counts_back_from_the_newest_snapshot_strictly() {
    let times =
        newest_first(&["2024-05-01T08:00:00", "2024-05-03T10:00:00", "2024-05-03T10:00:01", "2024-05-05T10:00:00"]);
    let p = KeepPolicy { within: Some(CalendarSpan::parse("2d").unwrap()), ..Default::default() };
    // Exactly two days before the newest is not "after" it.
    assert_eq!(kept(&p, &times), [0, 1]);
    assert_eq!(reasons(&p, &times)[0], "within 2d");
    // Even long after the newest snapshot (now does not matter).
    let p = KeepPolicy { within: Some(CalendarSpan::parse("49h").unwrap()), ..Default::default() };
    assert_eq!(kept(&p, &times), [0, 1, 2]);
}

#[test]
fn within_months_overflow_like_go() {
    // 31 March minus one month is "31 February": 2 March in 2024 (leap year).
    let span = CalendarSpan::parse("1m").unwrap();
    assert_eq!(span.before(t("2024-03-31T12:00:00")), Some(t("2024-03-02T12:00:00")));
    assert_eq!(span.before(t("2023-03-31T12:00:00")), Some(t("2023-03-03T12:00:00")));
    let span = CalendarSpan::parse("1y2m3d4h").unwrap();
    assert_eq!(span.before(t("2024-05-10T12:00:00")), Some(t("2023-03-07T08:00:00")));
    let span = CalendarSpan::parse("40d").unwrap();
    assert_eq!(span.before(t("2024-03-01T00:00:00")), Some(t("2024-01-21T00:00:00")));
}

#[test]
fn rules_combine_and_each_gives_its_reason() {
    let times =
        newest_first(&["2024-05-01T08:00:00", "2024-05-01T20:00:00", "2024-05-02T08:00:00", "2024-05-03T08:00:00"]);
    let p = KeepPolicy { last: 1, daily: 2, monthly: 1, ..Default::default() };
    assert_eq!(reasons(&p, &times), ["last snapshot, daily snapshot, monthly snapshot", "daily snapshot", "", ""]);
    let p = KeepPolicy { last: 1, daily: 3, ..Default::default() };
    assert_eq!(reasons(&p, &times), ["last snapshot, daily snapshot", "daily snapshot", "daily snapshot", ""]);
    let p = KeepPolicy { last: 1, daily: 4, ..Default::default() };
    assert_eq!(reasons(&p, &times)[3], "oldest daily snapshot");
}

#[test]
fn unlimited_never_runs_out() {
    let times =
        newest_first(&["2024-05-01T08:00:00", "2024-05-01T20:00:00", "2024-05-02T08:00:00", "2024-05-03T08:00:00"]);
    let p = KeepPolicy { daily: UNLIMITED, ..Default::default() };
    // Newest of each day, and the oldest because the count never ran out.
    assert_eq!(kept(&p, &times), [0, 1, 2, 3]);
    assert_eq!(reasons(&p, &times)[3], "oldest daily snapshot");
    assert_eq!(p.to_string(), "daily unlimited");
    assert_eq!(parse_count("unlimited"), Ok(UNLIMITED));
    assert_eq!(parse_count("3"), Ok(3));
    assert!(parse_count("-1").is_err());
}

#[test]
fn policy_in_words() {
    let p = KeepPolicy {
        last: 5,
        daily: 7,
        weekly: 4,
        within: Some(CalendarSpan::parse("1y6m").unwrap()),
        ..Default::default()
    };
    assert_eq!(p.to_string(), "last 5, daily 7, weekly 4, within 1y6m");
    assert_eq!(p.catch_up_count(), 16);
    assert_eq!(KeepPolicy { within: p.within, ..Default::default() }.catch_up_count(), 1);
    assert_eq!(p.with_last(Some(2)).last, 2);
    assert_eq!(p.with_last(None), p);
}

#[test]
fn spans_parse_like_restic_and_refuse_the_rest() {
    assert_eq!(CalendarSpan::parse("1y5m7d2h"), Ok(CalendarSpan { years: 1, months: 5, days: 7, hours: 2 }));
    assert_eq!(CalendarSpan::parse("36h"), Ok(CalendarSpan { hours: 36, ..Default::default() }));
    assert_eq!(CalendarSpan::parse("2d1y").unwrap().to_string(), "1y2d");
    for bad in ["", "5", "d", "2w", "1d1d", "1.5d", "-1d", "99999999999999999999d", "300y"] {
        assert!(CalendarSpan::parse(bad).is_err(), "{bad:?} accepted");
    }
}

/// restic's rules restated by grouping: the newest snapshot of each of the `n` newest buckets,
/// plus the oldest snapshot when fewer than `n` buckets exist.
fn by_grouping(times: &[Timestamp], n: usize, bucket: impl Fn(&DateTime) -> String) -> BTreeSet<usize> {
    let mut newest: BTreeMap<String, usize> = BTreeMap::new();
    for (i, t) in times.iter().enumerate() {
        newest.entry(bucket(&t.to_zoned(jiff::tz::TimeZone::UTC).datetime())).or_insert(i);
    }
    let mut picks: Vec<usize> = newest.values().copied().collect();
    picks.sort();
    let enough = picks.len() >= n;
    let mut keep: BTreeSet<usize> = picks.into_iter().take(n).collect();
    if !enough && !times.is_empty() {
        keep.insert(times.len() - 1);
    }
    keep
}

/// 40 snapshots over 120 days at irregular times (an agent down for days, several a day at
/// times), against the grouping formulation for every rule and count.
#[test]
fn forty_snapshots_over_120_days_match_the_grouping_formulation() {
    let start = t("2024-01-01T00:00:00");
    let mut offsets_hours: Vec<i64> = Vec::new();
    let mut h: i64 = 3;
    for i in 0..40i64 {
        offsets_hours.push(h);
        // Irregular gaps: 1 h to ~6 days, averaging 3 days over 120 days.
        h += [1, 5, 23, 71, 150, 26, 49, 97][(i % 8) as usize];
    }
    assert!(offsets_hours[39] < 120 * 24, "the history spans 120 days");
    let mut times: Vec<Timestamp> =
        offsets_hours.iter().map(|h| start.checked_add(jiff::SignedDuration::from_hours(*h)).unwrap()).collect();
    times.sort_by(|a, b| b.cmp(a));
    let set = |p: &KeepPolicy| kept(p, &times).into_iter().collect::<BTreeSet<usize>>();
    type Bucket = fn(&DateTime) -> String;
    type Make = fn(usize) -> KeepPolicy;
    let rules: [(Make, Bucket); 5] = [
        (|n| KeepPolicy { hourly: n, ..Default::default() }, |d| d.strftime("%Y-%m-%d %H").to_string()),
        (|n| KeepPolicy { daily: n, ..Default::default() }, |d| d.strftime("%Y-%m-%d").to_string()),
        (|n| KeepPolicy { weekly: n, ..Default::default() }, |d| d.date().iso_week_date().to_string()[..8].to_string()),
        (|n| KeepPolicy { monthly: n, ..Default::default() }, |d| d.strftime("%Y-%m").to_string()),
        (|n| KeepPolicy { yearly: n, ..Default::default() }, |d| d.strftime("%Y").to_string()),
    ];
    for (make, bucket) in rules {
        for n in [1, 2, 3, 5, 7, 12, 30, 45] {
            let p = make(n);
            assert_eq!(set(&p), by_grouping(&times, n, bucket), "{p}");
        }
    }
    for n in [1, 7, 40, 50] {
        assert_eq!(set(&KeepPolicy::last(n)), (0..n.min(40)).collect(), "last {n}");
    }
    // Within: every snapshot newer than the newest minus the span.
    for span in ["1d", "10d", "1m", "2m15d", "1y"] {
        let s = CalendarSpan::parse(span).unwrap();
        let cutoff = s.before(times[0]).unwrap();
        let expected: BTreeSet<usize> = (0..times.len()).filter(|i| times[*i] > cutoff).collect();
        assert_eq!(set(&KeepPolicy { within: Some(s), ..Default::default() }), expected, "within {span}");
    }
    // Rules combine as a union.
    let daily = set(&KeepPolicy { daily: 7, ..Default::default() });
    let monthly = set(&KeepPolicy { monthly: 3, ..Default::default() });
    let last = set(&KeepPolicy::last(2));
    let both = set(&KeepPolicy { last: 2, daily: 7, monthly: 3, ..Default::default() });
    assert_eq!(both, &(&daily | &monthly) | &last);
    // The weekly rule in numbers: 12 weeks keep 12 snapshots, the newest first.
    assert_eq!(set(&KeepPolicy { weekly: 12, ..Default::default() }).len(), 12);
}
