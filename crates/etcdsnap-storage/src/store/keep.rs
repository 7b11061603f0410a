//! Which snapshots of one group a keep policy keeps, and why: restic's `forget` rules, as a
//! pure function of the snapshots' times, so every store (and later every replica) decides the
//! same way.
//!
//! The rules, applied to the group newest first, each independently of the others; a snapshot
//! is kept when any rule keeps it:
//!
//! - `last N`: the N newest snapshots.
//! - `hourly N`, `daily N`, `weekly N`, `monthly N`, `yearly N`: the newest snapshot of each of
//!   the N newest calendar hours (days, ISO weeks, months, years) that have a snapshot, in UTC.
//!   When a rule has counts left after the oldest snapshot's bucket, the oldest snapshot is kept
//!   too ("oldest daily snapshot"), so a short history is kept whole rather than cut.
//! - `within SPAN`: every snapshot taken strictly after the newest snapshot's time minus SPAN
//!   (years, months, days and hours, counted on the UTC calendar). The reference is the newest
//!   snapshot, not the current time, so a node that stopped taking snapshots keeps its last ones.
//!
//! A count of [`UNLIMITED`] never runs out. A policy with no rule keeps everything.

use jiff::Timestamp;
use jiff::civil::DateTime;
use std::fmt;

/// A count that never runs out (restic's `unlimited`).
pub const UNLIMITED: usize = usize::MAX;

/// A calendar span for `within`: restic's `1y5m7d2h` (years, months, days, hours).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CalendarSpan {
    pub years: i16,
    pub months: i32,
    pub days: i32,
    pub hours: i64,
}

impl CalendarSpan {
    /// Parses `<n>y<n>m<n>d<n>h` with any of the parts, in that order or any other, each once
    /// (`2d`, `36h`, `1y6m`). `m` is months, as in restic.
    pub fn parse(s: &str) -> Result<CalendarSpan, String> {
        let bad = |why: &str| format!("invalid duration {s:?}: {why} (expected e.g. 7d, 36h or 1y6m; m is months)");
        let mut span = CalendarSpan::default();
        let mut seen = String::new();
        let mut digits = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            if digits.is_empty() {
                return Err(bad("a unit without a number"));
            }
            if seen.contains(c) {
                return Err(bad("a unit given twice"));
            }
            let n: i64 = digits.parse().map_err(|_| bad("a number too large"))?;
            let small = |max: i64| if n <= max { Ok(n) } else { Err(bad("a number too large")) };
            match c {
                'y' => span.years = small(200)? as i16,
                'm' => span.months = small(2400)? as i32,
                'd' => span.days = small(73_000)? as i32,
                'h' => span.hours = small(1_752_000)?,
                _ => return Err(bad("units are y, m (months), d and h")),
            }
            seen.push(c);
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(bad("a number without a unit"));
        }
        if seen.is_empty() {
            return Err(bad("empty"));
        }
        Ok(span)
    }

    pub fn is_zero(&self) -> bool {
        *self == CalendarSpan::default()
    }

    /// `t` minus this span on the UTC calendar, the way restic (Go's `AddDate`) counts: years
    /// and months move the month and keep the day, a day past the month's end overflows into the
    /// next (31 March minus one month is 3 March, or 2 March in a leap year), then days and
    /// hours are taken off. None when out of range.
    fn before(&self, t: Timestamp) -> Option<Timestamp> {
        let civil = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
        let months = i64::from(civil.year()) * 12 + i64::from(civil.month())
            - 1
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i16::try_from(months.div_euclid(12)).ok()?;
        let month = i8::try_from(months.rem_euclid(12) + 1).ok()?;
        let first = jiff::civil::Date::new(year, month, 1).ok()?;
        let offset = i64::from(civil.day()) - 1 - i64::from(self.days);
        let date = first.checked_add(jiff::Span::new().try_days(offset).ok()?).ok()?;
        let shifted = date.to_datetime(civil.time()).to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
        shifted.checked_sub(jiff::SignedDuration::from_hours(self.hours)).ok()
    }
}

impl fmt::Display for CalendarSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return write!(f, "0h");
        }
        for (n, unit) in [
            (i64::from(self.years), 'y'),
            (i64::from(self.months), 'm'),
            (i64::from(self.days), 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

/// What to keep of one group (restic's `--keep-*`); 0 turns a rule off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
    pub within: Option<CalendarSpan>,
}

/// A calendar rule (or `last`), as a bucket of a snapshot time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    const ALL: [Rule; 6] = [Rule::Last, Rule::Hourly, Rule::Daily, Rule::Weekly, Rule::Monthly, Rule::Yearly];

    fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    /// The bucket `t` falls in (the position for `last`, so every snapshot is its own).
    fn bucket(self, t: &DateTime, position: usize) -> i64 {
        let (y, m, d, h) = (i64::from(t.year()), i64::from(t.month()), i64::from(t.day()), i64::from(t.hour()));
        match self {
            Rule::Last => position as i64,
            Rule::Hourly => ((y * 100 + m) * 100 + d) * 100 + h,
            Rule::Daily => (y * 100 + m) * 100 + d,
            Rule::Weekly => {
                let week = t.date().iso_week_date();
                i64::from(week.year()) * 100 + i64::from(week.week())
            }
            Rule::Monthly => y * 100 + m,
            Rule::Yearly => y,
        }
    }
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepReason {
    /// A counted rule kept it; `oldest` when only because the rule had counts left at the end.
    Rule { rule: Rule, oldest: bool },
    /// It is within the span of the newest snapshot.
    Within(CalendarSpan),
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Rule { rule: Rule::Last, .. } => write!(f, "last snapshot"),
            KeepReason::Rule { rule, oldest: false } => write!(f, "{} snapshot", rule.name()),
            KeepReason::Rule { rule, oldest: true } => write!(f, "oldest {} snapshot", rule.name()),
            KeepReason::Within(span) => write!(f, "within {span}"),
        }
    }
}

impl KeepPolicy {
    /// Keeps the newest `n` (what a count-based retention meant so far); 0 keeps everything.
    pub fn last(n: usize) -> KeepPolicy {
        KeepPolicy { last: n, ..KeepPolicy::default() }
    }

    /// This policy with `last` replaced by `n` when given (S3's own count, `etcd-s3-retention`).
    pub fn with_last(self, n: Option<usize>) -> KeepPolicy {
        match n {
            Some(last) => KeepPolicy { last, ..self },
            None => self,
        }
    }

    /// How many of the newest snapshots a catch-up upload may consider: the counted rules'
    /// total, and at least the newest one when `within` is set (it always keeps the newest).
    pub fn catch_up_count(&self) -> usize {
        let counted = Rule::ALL.iter().fold(0usize, |sum, r| sum.saturating_add(self.count(*r)));
        if counted == 0 && self.within.is_some_and(|w| !w.is_zero()) { 1 } else { counted }
    }

    /// Whether no rule is set: everything is kept.
    pub fn is_empty(&self) -> bool {
        Rule::ALL.iter().all(|r| self.count(*r) == 0) && self.within.is_none_or(|w| w.is_zero())
    }

    fn count(&self, rule: Rule) -> usize {
        match rule {
            Rule::Last => self.last,
            Rule::Hourly => self.hourly,
            Rule::Daily => self.daily,
            Rule::Weekly => self.weekly,
            Rule::Monthly => self.monthly,
            Rule::Yearly => self.yearly,
        }
    }

    /// For each of `times`, newest first, the reasons it is kept (empty: it goes). `times` must be
    /// sorted newest first. With no rule set, every snapshot is kept with no reason given, so
    /// use [`KeepPolicy::is_empty`] first to tell the two apart.
    pub fn apply(&self, times: &[Timestamp]) -> Vec<Vec<KeepReason>> {
        let mut reasons = vec![Vec::new(); times.len()];
        if self.is_empty() || times.is_empty() {
            return reasons;
        }
        let latest = times.iter().max().copied().unwrap_or(times[0]);
        let within = self.within.filter(|w| !w.is_zero()).map(|w| (w, w.before(latest)));
        let mut left: Vec<(Rule, usize, Option<i64>)> =
            Rule::ALL.iter().map(|r| (*r, self.count(*r), None)).filter(|(_, n, _)| *n > 0).collect();
        for (position, t) in times.iter().enumerate() {
            if let Some((span, cutoff)) = within
                && cutoff.is_none_or(|c| *t > c)
            {
                reasons[position].push(KeepReason::Within(span));
            }
            let civil = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
            let oldest = position + 1 == times.len();
            for (rule, count, last) in left.iter_mut().filter(|(_, n, _)| *n > 0) {
                let bucket = rule.bucket(&civil, position);
                let new_bucket = *last != Some(bucket);
                if new_bucket || oldest {
                    reasons[position].push(KeepReason::Rule { rule: *rule, oldest: !new_bucket });
                    *last = Some(bucket);
                    if *count != UNLIMITED {
                        *count -= 1;
                    }
                }
            }
        }
        reasons
    }
}

impl fmt::Display for KeepPolicy {
    /// `last 5, daily 7, within 2d`, or `everything` when no rule is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "everything");
        }
        let mut parts = Vec::new();
        for rule in Rule::ALL {
            match self.count(rule) {
                0 => {}
                UNLIMITED => parts.push(format!("{} unlimited", rule.name())),
                n => parts.push(format!("{} {n}", rule.name())),
            }
        }
        if let Some(w) = self.within.filter(|w| !w.is_zero()) {
            parts.push(format!("within {w}"));
        }
        write!(f, "{}", parts.join(", "))
    }
}

/// Parses a keep count: a number or `unlimited`.
pub fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim() {
        "unlimited" => Ok(UNLIMITED),
        n => n.parse().map_err(|_| format!("invalid count {s:?} (expected a number or \"unlimited\")")),
    }
}

#[cfg(test)]
mod tests;
