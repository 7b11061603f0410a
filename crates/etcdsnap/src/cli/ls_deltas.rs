//! `etcdsnap ls --deltas`: the delta chains beside the snapshot directory, each with its base,
//! the revisions and times it covers, and its gaps, so an operator sees how far back and how
//! close to now a point-in-time restore can go before needing one.

use super::args::OutputFormat;
use super::output::{self, human_bytes, rfc3339};
use etcdsnap_storage::pitr::{ChainSummary, local, summarize};
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChainPrinted {
    chain: String,
    base_revision: i64,
    /// The newest revision a restore can reach from the base without crossing a gap.
    reachable_revision: i64,
    last_revision: i64,
    first_observed: Option<String>,
    last_observed: Option<String>,
    segments: usize,
    events: u64,
    stored_bytes: u64,
    gaps: Vec<String>,
    broken: Option<String>,
}

fn time(ms: Option<i64>) -> Option<String> {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()).map(rfc3339)
}

fn gaps(c: &ChainSummary) -> Vec<String> {
    c.gaps.iter().map(|g| format!("{}..{}", g.after + 1, g.resumes_at - 1)).collect()
}

fn printed(c: &ChainSummary) -> ChainPrinted {
    ChainPrinted {
        chain: c.chain.clone(),
        base_revision: c.base_revision,
        reachable_revision: c.reachable,
        last_revision: c.last_revision,
        first_observed: time(c.first_observed_ms),
        last_observed: time(c.last_observed_ms),
        segments: c.segments,
        events: c.events,
        stored_bytes: c.stored_bytes,
        gaps: gaps(c),
        broken: c.broken.clone(),
    }
}

/// Prints the chains of `snapshot_dir`; false when a record could not be read.
pub fn print_chains(snapshot_dir: &Path, format: OutputFormat) -> std::io::Result<bool> {
    let (records, warnings) = local::read_all(&local::dir_beside(snapshot_dir));
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let chains = summarize(&records);
    if format != OutputFormat::Table {
        let list: Vec<ChainPrinted> = chains.iter().map(printed).collect();
        output::print_structured(&list, format)?;
        return Ok(warnings.is_empty());
    }
    if chains.is_empty() {
        println!("No delta chains beside {} (run the agent with --deltas).", snapshot_dir.display());
        return Ok(warnings.is_empty());
    }
    let mut rows =
        vec![["CHAIN", "REVISIONS", "OBSERVED", "SEGMENTS", "EVENTS", "SIZE", "STATE"].map(String::from).to_vec()];
    for c in &chains {
        let state = match (&c.broken, gaps(c)) {
            (Some(why), _) => format!("broken: {why}"),
            (None, g) if g.is_empty() => "ok".into(),
            (None, g) => format!("gaps {} (reachable to {})", g.join(", "), c.reachable),
        };
        let observed = match (time(c.first_observed_ms), time(c.last_observed_ms)) {
            (Some(a), Some(b)) => format!("{a} to {b}"),
            _ => "-".into(),
        };
        rows.push(vec![
            c.chain.clone(),
            format!("{}..{}", c.base_revision + 1, c.last_revision),
            observed,
            c.segments.to_string(),
            c.events.to_string(),
            human_bytes(c.stored_bytes),
            state,
        ]);
    }
    print!("{}", output::table(&rows));
    Ok(warnings.is_empty())
}
