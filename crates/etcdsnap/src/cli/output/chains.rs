//! Point-in-time recovery's delta chains (`ls --deltas`, and the chains a point-in-time
//! restore plans with): a row per chain, or [`ChainView`], the same fields in both commands.

use super::{human_bytes, rfc3339, table};
use etcdsnap_storage::pitr::ChainSummary;
use serde::Serialize;

/// One chain: its base, how far a restore can reach from it, what it covers, its gaps.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainView {
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
    /// Missing revisions, `first..last`.
    gaps: Vec<String>,
    /// Why the chain stops, when it does.
    broken: Option<String>,
}

impl ChainView {
    pub fn new(c: &ChainSummary) -> ChainView {
        ChainView {
            chain: c.chain.clone(),
            base_revision: c.base_revision,
            reachable_revision: c.reachable,
            last_revision: c.last_revision,
            first_observed: ms_time(c.first_observed_ms),
            last_observed: ms_time(c.last_observed_ms),
            segments: c.segments,
            events: c.events,
            stored_bytes: c.stored_bytes,
            gaps: gaps(c),
            broken: c.broken.clone(),
        }
    }
}

/// A time in milliseconds since the epoch, as RFC 3339.
pub fn ms_time(ms: Option<i64>) -> Option<String> {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()).map(rfc3339)
}

/// The chain's gaps, `first..last` missing revision each.
pub fn gaps(c: &ChainSummary) -> Vec<String> {
    c.gaps.iter().map(|g| format!("{}..{}", g.after + 1, g.resumes_at - 1)).collect()
}

/// `ls --deltas`'s table.
pub fn table_of(chains: &[ChainSummary]) -> String {
    let mut rows =
        vec![["CHAIN", "REVISIONS", "OBSERVED", "SEGMENTS", "EVENTS", "SIZE", "STATE"].map(String::from).to_vec()];
    for c in chains {
        let state = match (&c.broken, gaps(c)) {
            (Some(why), _) => format!("broken: {why}"),
            (None, g) if g.is_empty() => "ok".into(),
            (None, g) => format!("gaps {} (reachable to {})", g.join(", "), c.reachable),
        };
        let observed = match (ms_time(c.first_observed_ms), ms_time(c.last_observed_ms)) {
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
    table(&rows)
}
