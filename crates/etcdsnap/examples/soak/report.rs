//! What the soak reports: the run (seed, length), the work done (saves), the faults injected,
//! the invariants' violations, and whether each agent's memory and open files stayed flat.

use crate::Options;
use crate::agents::{Agent, Life, Sample};
use crate::chaos::Chaos;
use crate::check::Verdict;
use crate::fds::{self, Kinds};
use std::collections::BTreeMap;
use std::time::Duration;

/// `etcdsnap verify`'s results by location (a snapshot verified by several nodes counts once).
#[derive(Debug, Default)]
pub struct Verified {
    pub results: BTreeMap<String, bool>,
    pub listing_errors: usize,
}

impl Verified {
    pub fn failed(&self) -> usize {
        self.results.values().filter(|ok| !**ok).count() + self.listing_errors
    }
}

/// Saves one agent logged over all its lives.
#[derive(Debug, Default, Clone, Copy)]
struct Saves {
    complete: usize,
    partial: usize,
    failed: usize,
}

fn saves(agent: &Agent) -> Saves {
    let mut s = Saves::default();
    for line in agent.log_text().lines() {
        if line.contains("snapshot taken") {
            if line.contains("ok=true") { s.complete += 1 } else { s.partial += 1 }
        } else if line.contains("scheduled snapshot failed") {
            s.failed += 1;
        }
    }
    s
}

/// Memory and open files over one agent's longest life: early (minutes 3–6 of it, once the
/// allocator and connection pools are warm) against late (its last 2 minutes), medians of 5 s
/// samples.
#[derive(Debug, Clone)]
struct Footprint {
    life: Duration,
    rss_early_kib: u64,
    rss_late_kib: u64,
    rss_max_kib: u64,
    fds_early: u64,
    fds_late: u64,
    fds_max: u64,
    /// The open files by kind at the last sample of that life.
    kinds_late: Kinds,
}

impl Footprint {
    fn of(agent: &Agent) -> Option<Footprint> {
        let life = agent.lives.iter().max_by_key(|l| span(l))?;
        let first = life.samples.first()?.at;
        let last = life.samples.last()?.at;
        let early: Vec<&Sample> = life.samples.iter().filter(|s| in_range(s.at - first, 180, 360)).collect();
        let late: Vec<&Sample> = life.samples.iter().filter(|s| last - s.at <= Duration::from_secs(120)).collect();
        Some(Footprint {
            life: last - first,
            rss_early_kib: median(early.iter().map(|s| s.rss_kib))?,
            rss_late_kib: median(late.iter().map(|s| s.rss_kib))?,
            rss_max_kib: life.samples.iter().map(|s| s.rss_kib).max()?,
            fds_early: median(early.iter().map(|s| s.fds))?,
            fds_late: median(late.iter().map(|s| s.fds))?,
            fds_max: life.samples.iter().map(|s| s.fds).max()?,
            kinds_late: life.samples.last()?.kinds.clone(),
        })
    }

    /// Flat: late within 20% (and 4 MiB) of early, and at most 8 more open files.
    fn flat(&self) -> bool {
        self.rss_late_kib <= self.rss_early_kib + (self.rss_early_kib / 5).max(4096)
            && self.fds_late <= self.fds_early + 8
    }
}

fn span(life: &Life) -> Duration {
    match (life.samples.first(), life.samples.last()) {
        (Some(a), Some(b)) => b.at - a.at,
        _ => Duration::ZERO,
    }
}

fn in_range(d: Duration, from_secs: u64, to_secs: u64) -> bool {
    d >= Duration::from_secs(from_secs) && d <= Duration::from_secs(to_secs)
}

fn median(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut v: Vec<u64> = values.collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

pub struct Report {
    seed: u64,
    minutes: u64,
    elapsed: Duration,
    saves: Vec<(&'static str, Saves, usize)>,
    footprints: Vec<(&'static str, Option<Footprint>)>,
    faults: BTreeMap<String, u32>,
    journal: Vec<String>,
    stored: (usize, usize),
    resources: usize,
    failed_save_resources: usize,
    verified: usize,
    verify_failed: usize,
    violations: Vec<String>,
}

impl Report {
    pub fn new(
        opts: &Options,
        elapsed: Duration,
        agents: &[Agent],
        chaos: &Chaos,
        verdict: &Verdict,
        verified: &Verified,
    ) -> Report {
        let mut violations = verdict.violations.clone();
        let footprints: Vec<_> = agents.iter().map(|a| (a.node, Footprint::of(a))).collect();
        for (node, f) in &footprints {
            match f {
                Some(f) if !f.flat() => violations.push(format!("{node}: memory or open files grew: {f:?}")),
                None => violations.push(format!("{node}: too few samples to judge memory and open files")),
                _ => {}
            }
        }
        Report {
            seed: opts.seed,
            minutes: opts.minutes,
            elapsed,
            saves: agents.iter().map(|a| (a.node, saves(a), a.lives.len())).collect(),
            footprints,
            faults: chaos.injected.iter().map(|(k, n)| (format!("{k:?}"), *n)).collect(),
            journal: chaos.journal.clone(),
            stored: (verdict.stored_local, verdict.stored_s3),
            resources: verdict.resources,
            failed_save_resources: verdict.failed_save_resources,
            verified: verified.results.len(),
            verify_failed: verified.failed(),
            violations,
        }
    }

    pub fn violations(&self) -> usize {
        self.violations.len() + self.verify_failed
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## Soak: seed {}, {} minutes (ran {:.1} min)\n\n| node | complete saves | partial | failed | lives | RSS early → late (max) MiB | open files early → late (max) |\n|---|---|---|---|---|---|---|\n",
            self.seed,
            self.minutes,
            self.elapsed.as_secs_f64() / 60.0
        );
        for ((node, s, lives), (_, f)) in self.saves.iter().zip(&self.footprints) {
            let (rss, fds) = match f {
                Some(f) => (
                    format!(
                        "{:.1} → {:.1} ({:.1}) over {} min",
                        mib(f.rss_early_kib),
                        mib(f.rss_late_kib),
                        mib(f.rss_max_kib),
                        f.life.as_secs() / 60
                    ),
                    format!("{} → {} ({})", f.fds_early, f.fds_late, f.fds_max),
                ),
                None => ("-".into(), "-".into()),
            };
            out += &format!("| {node} | {} | {} | {} | {lives} | {rss} | {fds} |\n", s.complete, s.partial, s.failed);
        }
        out += "\nOpen files at the end of each agent's longest life:\n";
        for (node, f) in &self.footprints {
            if let Some(f) = f {
                out += &format!("- {node}: {}\n", fds::summary(&f.kinds_late));
            }
        }
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out += &format!(
            "\nFaults injected: {} ({}).\nAt the end: {} local and {} S3 snapshots, {} resources ({} of failed saves), {} snapshots verified ({} failed).\nInvariant violations: {}.\n",
            self.journal.len(),
            faults.join(", "),
            self.stored.0,
            self.stored.1,
            self.resources,
            self.failed_save_resources,
            self.verified,
            self.verify_failed,
            self.violations()
        );
        for v in &self.violations {
            out += &format!("- {v}\n");
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "seed": self.seed,
            "minutes": self.minutes,
            "elapsedSeconds": self.elapsed.as_secs(),
            "saves": self.saves.iter().map(|(n, s, lives)| serde_json::json!({
                "node": n, "complete": s.complete, "partial": s.partial, "failed": s.failed, "lives": lives,
            })).collect::<Vec<_>>(),
            "footprints": self.footprints.iter().map(|(n, f)| serde_json::json!({
                "node": n, "footprint": f.as_ref().map(|f| format!("{f:?}")), "flat": f.as_ref().map(Footprint::flat),
            })).collect::<Vec<_>>(),
            "faults": self.faults,
            "journal": self.journal,
            "storedLocal": self.stored.0,
            "storedS3": self.stored.1,
            "resources": self.resources,
            "verified": self.verified,
            "verifyFailed": self.verify_failed,
            "violations": self.violations,
        })
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
