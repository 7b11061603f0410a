//! `etcdsnap agent` as a child process with its metrics endpoint: the one way the tests start an
//! agent (`cluster::start_agent` gives it the arguments of a cluster's node).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

/// A running agent; killed on drop.
pub struct Agent {
    child: tokio::process::Child,
    /// `127.0.0.1:<port>` of its /metrics, /healthz and /readyz.
    pub metrics: String,
    log: PathBuf,
}

impl Agent {
    /// Starts `etcdsnap agent` with its metrics on a free port and no schedule jitter, then
    /// `args` (a later flag overrides an earlier one) and `env` (nothing else of the caller's
    /// ETCDSNAP_* or cloud settings: [`super::command`]); its log goes to `log_dir`. Returns as
    /// soon as the process runs.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Result<Agent, Error> {
        let port = testenv::free_port()?;
        let metrics = format!("127.0.0.1:{port}");
        let log = log_dir.join(format!("agent-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = super::command(&["agent", "--metrics-addr", &metrics, "--schedule-jitter", "0s"]);
        cmd.args(args).envs(env.iter().copied()).stdout(file.try_clone()?).stderr(file);
        Ok(Agent { child: cmd.spawn()?, metrics, log })
    }

    /// [`Agent::spawn`], then waits until /healthz answers.
    pub async fn start(args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Result<Agent, Error> {
        let agent = Agent::spawn(args, env, log_dir)?;
        agent.wait_for("/healthz", |_, code| code == 200, Duration::from_secs(20)).await?;
        Ok(agent)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-TERM`, `-KILL`) to the agent.
    pub fn signal(&self, signal: &str) -> Result<(), Error> {
        let pid = self.pid().ok_or("agent not running")?;
        let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status()?;
        if !status.success() {
            return Err(format!("kill {signal} {pid} failed").into());
        }
        Ok(())
    }

    /// The status code and body of `GET <path>` on its metrics address.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let resp = reqwest::get(format!("http://{}{path}", self.metrics)).await.map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        Ok((code, resp.text().await.map_err(|e| e.to_string())?))
    }

    /// Polls `path` until `ok(body, status)`; returns the body.
    pub async fn wait_for(
        &self,
        path: &str,
        ok: impl Fn(&str, u16) -> bool,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((code, body)) = self.get(path).await
                && ok(&body, code)
            {
                return Ok(body);
            }
            if Instant::now() > deadline {
                return Err(format!("timed out waiting on {path}; agent log:\n{}", self.log_text()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls `/metrics` until `series` is at least `min`; returns the whole exposition.
    pub async fn wait_for_metric(&self, series: &str, min: f64, timeout: Duration) -> Result<String, String> {
        self.wait_for("/metrics", |b, _| metric(b, series).is_some_and(|v| v >= min), timeout).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then [`Agent::exited`]: the agent must shut down cleanly. Returns its log.
    pub async fn stop(self) -> Result<String, Error> {
        self.signal("-TERM")?;
        self.exited().await
    }

    /// Waits (30 s at most) for the agent to exit, which it must do with status 0. Returns its log.
    pub async fn exited(self) -> Result<String, Error> {
        let (status, log) = self.exit_status(Duration::from_secs(30)).await?;
        if !status.success() {
            return Err(format!("the agent exited with {status}:\n{log}").into());
        }
        Ok(log)
    }

    /// Waits (`timeout` at most) for the agent to exit, whatever its status. Returns the status
    /// and its log.
    pub async fn exit_status(mut self, timeout: Duration) -> Result<(std::process::ExitStatus, String), Error> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => return Err(format!("the agent did not exit within {timeout:?}:\n{}", self.log_text()).into()),
        };
        Ok((status, self.log_text()))
    }

    /// SIGKILL (no chance to clean up), and waits for the process to go. Returns its log.
    pub async fn kill(mut self) -> Result<String, Error> {
        self.child.kill().await?;
        Ok(self.log_text())
    }
}

/// The value of a metric line `name{labels} value`.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
