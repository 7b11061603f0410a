//! When scheduled snapshots run: K3s's 5-field cron dialect (`0 */12 * * *`), `@hourly`-style
//! nicknames, and an optional leading seconds field (so tests can run every few seconds), in the
//! machine's local time zone like K3s.

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use std::time::Duration;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    expression: String,
}

impl Schedule {
    /// Parses a cron expression; the error says what was wrong.
    pub fn parse(expression: &str) -> Result<Schedule, String> {
        let trimmed = expression.trim();
        if trimmed.is_empty() {
            return Err("empty cron expression".into());
        }
        let cron = parser().parse(trimmed).map_err(|e| match field_at_fault(trimmed) {
            Some(fault) => format!("invalid cron expression {trimmed:?}: {fault}"),
            None => format!("invalid cron expression {trimmed:?}: {e}"),
        })?;
        let schedule = Schedule { cron, expression: trimmed.to_string() };
        // An expression that never fires (e.g. 30 February) is as wrong as a malformed one.
        schedule
            .next_after(etcdsnap_storage::clock::now_zoned())
            .ok_or_else(|| format!("cron expression {trimmed:?} never fires"))?;
        Ok(schedule)
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first time strictly after `now`.
    pub fn next_after(&self, now: jiff::Zoned) -> Option<jiff::Zoned> {
        self.cron.find_next_occurrence(&now, false).ok()
    }

    /// The time between the next two runs (for a regular schedule, its period).
    pub fn interval(&self) -> Option<Duration> {
        let first = self.next_after(etcdsnap_storage::clock::now_zoned())?;
        let second = self.next_after(first.clone())?;
        Duration::try_from(second.timestamp().duration_since(first.timestamp())).ok()
    }

    /// How long to wait from now until the next run.
    pub fn until_next(&self) -> Option<Duration> {
        self.next().map(|(_, wait)| wait)
    }

    /// The next run: when, and how long from now.
    pub fn next(&self) -> Option<(jiff::Zoned, Duration)> {
        let now = etcdsnap_storage::clock::now_zoned();
        let next = self.next_after(now.clone())?;
        let span = next.timestamp().duration_since(now.timestamp());
        Duration::try_from(span).ok().map(|wait| (next, wait))
    }
}

/// The names of a 5-field expression's fields, in order (a 6-field one starts with seconds).
const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).build()
}

/// Which field of a refused expression is wrong, and why: each field is tried alone, the others
/// `*`. None for nicknames and when no single field is to blame.
fn field_at_fault(expression: &str) -> Option<String> {
    if expression.starts_with('@') {
        return None;
    }
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let names: Vec<&str> = match fields.len() {
        5 => FIELDS.to_vec(),
        6 => std::iter::once("second").chain(FIELDS).collect(),
        n => {
            return Some(format!("{n} fields; a schedule has 5 ({}) or 6, with seconds first", FIELDS.join(" ")));
        }
    };
    fields.iter().enumerate().find_map(|(i, value)| {
        let alone: Vec<&str> = (0..fields.len()).map(|j| if i == j { *value } else { "*" }).collect();
        parser().parse(&alone.join(" ")).err().map(|e| format!("the {} field {value:?}: {e}", names[i]))
    })
}

pub use etcdsnap_storage::retry::jitter;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Zoned {
        s.parse().unwrap()
    }

    #[test]
    fn k3s_default_fires_at_midnight_and_noon() {
        let s = Schedule::parse("0 */12 * * *").unwrap();
        let next = s.next_after(at("2026-11-25T10:15:00+00:00[UTC]")).map(|z| z.to_string());
        assert_eq!(next.as_deref(), Some("2026-11-25T12:00:00+00:00[UTC]"));
        let next = s.next_after(at("2026-11-25T12:00:00+00:00[UTC]")).map(|z| z.to_string());
        assert_eq!(next.as_deref(), Some("2026-11-26T00:00:00+00:00[UTC]"));
    }

    #[test]
    fn seconds_and_nicknames() {
        let s = Schedule::parse("*/5 * * * * *").unwrap();
        let next = s.next_after(at("2026-11-25T10:15:01+00:00[UTC]")).map(|z| z.to_string());
        assert_eq!(next.as_deref(), Some("2026-11-25T10:15:05+00:00[UTC]"));
        let s = Schedule::parse("@hourly").unwrap();
        let next = s.next_after(at("2026-11-25T10:15:01+00:00[UTC]")).map(|z| z.to_string());
        assert_eq!(next.as_deref(), Some("2026-11-25T11:00:00+00:00[UTC]"));
        assert!(Schedule::parse("@daily").is_ok());
    }

    #[test]
    fn an_error_names_the_field_at_fault() {
        let err = |e: &str| Schedule::parse(e).unwrap_err();
        assert!(err("61 * * * *").contains("the minute field \"61\""), "{}", err("61 * * * *"));
        assert!(err("0 25 * * *").contains("the hour field \"25\""), "{}", err("0 25 * * *"));
        assert!(err("0 0 * 13 *").contains("the month field \"13\""), "{}", err("0 0 * 13 *"));
        assert!(err("*/5 0 0 * * 9").contains("the day-of-week field \"9\""), "{}", err("*/5 0 0 * * 9"));
        assert!(err("70 0 0 * * *").contains("the second field \"70\""), "{}", err("70 0 0 * * *"));
        assert!(err("* * *").contains("3 fields; a schedule has 5"), "{}", err("* * *"));
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in ["", "every day", "61 * * * *", "* * *", "0 0 30 2 *", "@fortnightly"] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
