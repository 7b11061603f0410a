//! The chaos driver: one fault at a time, each bounded in time, chosen and timed by a seeded
//! random generator so a run can be repeated exactly (the seed is in the report).

use crate::agents::{Agent, Fleet};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testenv::{Etcd, Fault, FaultProxy, KubeApiServer};

/// The kinds of fault, as the report counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// SIGSTOP an agent (the leader half of the time), SIGCONT it later.
    PauseAgent,
    /// SIGKILL an agent, start it again later.
    KillAgent,
    /// Kill the API server, start it again later.
    RestartApiServer,
    /// Every S3 connection through the proxy is cut (requests reach S3, answers do not).
    CutS3,
    /// Kill the etcd leader member, start it again later.
    KillEtcdLeader,
}

pub const KINDS: [Kind; 5] =
    [Kind::PauseAgent, Kind::KillAgent, Kind::RestartApiServer, Kind::CutS3, Kind::KillEtcdLeader];

impl Kind {
    /// The name `SOAK_FAULTS` uses.
    pub fn name(self) -> &'static str {
        match self {
            Kind::PauseAgent => "pause-agent",
            Kind::KillAgent => "kill-agent",
            Kind::RestartApiServer => "restart-api-server",
            Kind::CutS3 => "cut-s3",
            Kind::KillEtcdLeader => "kill-etcd-leader",
        }
    }

    /// The kinds named in a comma-separated list (`SOAK_FAULTS`).
    pub fn parse_list(list: &str) -> anyhow::Result<Vec<Kind>> {
        list.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                KINDS.into_iter().find(|k| k.name() == n).ok_or_else(|| {
                    let known: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
                    anyhow::anyhow!("SOAK_FAULTS: unknown fault {n:?} (known: {})", known.join(", "))
                })
            })
            .collect()
    }
}

/// Everything the driver may break.
pub struct World<'a> {
    pub etcd: &'a mut Etcd,
    pub api: &'a mut KubeApiServer,
    pub proxy: &'a FaultProxy,
    pub agents: &'a mut [Agent],
    pub fleet: &'a Fleet,
    pub started: Instant,
}

impl World<'_> {
    /// Sleeps `d`, sampling every agent every 5 s meanwhile.
    pub async fn sleep_sampling(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            for a in self.agents.iter_mut() {
                a.sample(self.started);
            }
            tokio::time::sleep((end - Instant::now()).min(Duration::from_secs(5))).await;
        }
    }

    /// Logs every running agent's open files by kind.
    pub fn log_open_files(&self) {
        let at = self.started.elapsed().as_secs();
        for a in self.agents.iter() {
            if let Some(kinds) = a.open_files() {
                eprintln!("soak: t={at}s open files of {}: {}", a.node, crate::fds::summary(kinds));
            }
        }
    }
}

pub struct Chaos {
    rng: StdRng,
    /// The kinds of fault to choose from.
    kinds: Vec<Kind>,
    pub injected: BTreeMap<Kind, u32>,
    /// One line per fault, for the run's log.
    pub journal: Vec<String>,
}

impl Chaos {
    pub fn new(seed: u64, kinds: Vec<Kind>) -> Chaos {
        Chaos { rng: StdRng::seed_from_u64(seed), kinds, injected: BTreeMap::new(), journal: Vec::new() }
    }

    /// Injects faults until `until`, with 5–30 s of calm between them.
    pub async fn run(&mut self, world: &mut World<'_>, until: Instant) -> anyhow::Result<()> {
        while Instant::now() < until {
            let calm = Duration::from_secs(self.rng.random_range(5..=30));
            world.sleep_sampling(calm).await;
            // What the last fault and the calm after it left open.
            world.log_open_files();
            if Instant::now() >= until {
                break;
            }
            let kind = self.kinds[self.rng.random_range(0..self.kinds.len())];
            self.inject(world, kind).await?;
        }
        Ok(())
    }

    async fn inject(&mut self, world: &mut World<'_>, kind: Kind) -> anyhow::Result<()> {
        let at = world.started.elapsed().as_secs();
        let what = match kind {
            Kind::PauseAgent => {
                let i = self.agent(world).await;
                let d = Duration::from_secs(self.rng.random_range(5..=40));
                world.agents[i].signal("-STOP");
                world.sleep_sampling(d).await;
                world.agents[i].signal("-CONT");
                format!("paused {} for {d:?}", world.agents[i].node)
            }
            Kind::KillAgent => {
                let i = self.agent(world).await;
                let d = Duration::from_secs(self.rng.random_range(2..=10));
                world.agents[i].kill();
                world.sleep_sampling(d).await;
                world.agents[i].start(world.fleet, world.started)?;
                format!("killed {}, restarted after {d:?}", world.agents[i].node)
            }
            Kind::RestartApiServer => {
                let d = Duration::from_secs(self.rng.random_range(3..=20));
                world.api.stop();
                world.sleep_sampling(d).await;
                world.api.restart().await?;
                format!("API server down for {d:?}")
            }
            Kind::CutS3 => {
                let d = Duration::from_secs(self.rng.random_range(5..=30));
                world.proxy.set_fault(Fault::CutAt(0));
                world.sleep_sampling(d).await;
                world.proxy.set_fault(Fault::None);
                format!("S3 cut for {d:?}")
            }
            Kind::KillEtcdLeader => {
                let d = Duration::from_secs(self.rng.random_range(3..=15));
                let leader = world.etcd.leader_index().await?;
                world.etcd.kill(leader);
                world.sleep_sampling(d).await;
                world.etcd.restart(leader).await?;
                format!("etcd member {leader} (the leader) down for {d:?}")
            }
        };
        *self.injected.entry(kind).or_default() += 1;
        self.journal.push(format!("t={at}s {what}"));
        eprintln!("soak: t={at}s {what}");
        Ok(())
    }

    /// The agent to hit: the leader half of the time, otherwise any.
    async fn agent(&mut self, world: &World<'_>) -> usize {
        if self.rng.random_bool(0.5)
            && let Ok(client) = world.api.client().await
            && let Some(holder) = leader_holder(&client).await
            && let Some(i) = world.agents.iter().position(|a| a.node == holder)
        {
            return i;
        }
        self.rng.random_range(0..world.agents.len())
    }
}

/// The node of the leader Lease's holder (an agent holds it as `<node>/<instance>`).
async fn leader_holder(client: &kube::Client) -> Option<String> {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), "kube-system");
    let holder = leases.get_opt("etcdsnap-leader").await.ok()??.spec?.holder_identity?;
    Some(etcdsnap_kube::leader::holder_node(&holder).to_string())
}
