//! `etcdsnap agent` as a child process with its metrics endpoint, for the agent and fault tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A running agent; killed on drop.
pub struct AgentProcess {
    pub child: tokio::process::Child,
    pub metrics: String,
    pub log: PathBuf,
}

impl AgentProcess {
    pub async fn start(
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> Result<AgentProcess, Box<dyn std::error::Error>> {
        let port = testenv::free_port()?;
        let metrics = format!("127.0.0.1:{port}");
        let log = log_dir.join(format!("agent-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = super::command(&["agent", "--metrics-addr", &metrics, "--schedule-jitter", "0s"]);
        cmd.args(args).stdout(file.try_clone()?).stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        let agent = AgentProcess { child, metrics, log };
        agent.wait_for("/healthz", |_, code| code == 200, Duration::from_secs(20)).await?;
        Ok(agent)
    }

    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let resp = reqwest::get(format!("http://{}{path}", self.metrics)).await.map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        Ok((code, resp.text().await.map_err(|e| e.to_string())?))
    }

    /// Polls `path` until `ok(body, status)`.
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

    /// SIGTERM, then the exit code.
    pub async fn terminate(mut self) -> Result<(Option<i32>, String), Box<dyn std::error::Error>> {
        let pid = self.child.id().ok_or("agent already exited")?;
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        Ok((status.code(), self.log_text()))
    }
}

/// The value of a metric line `name{labels} value`.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
