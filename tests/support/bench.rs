//! Helpers shared by the benchmarks: the release binaries as separate processes, and statistics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TestEnv, wait_until};

/// A binary built next to the running benchmark (`cargo build --release --bins` first).
pub fn release_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let binary = dir.join(name);
    assert!(binary.exists(), "{} is missing: build the release binaries first", binary.display());
    binary
}

/// A service process, killed when dropped.
pub struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _reaped = self.0.wait();
    }
}

/// Starts `binary` against `env`'s database, Redis prefix, stream and consumer, listening on
/// `port` through the variable `listen_var`.
pub fn spawn(env: &TestEnv, binary: &str, listen_var: &str, port: u16) -> Service {
    let child = Command::new(release_binary(binary))
        .envs(env.service_env())
        .env(listen_var, format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn service");
    Service(child)
}

pub async fn wait_ready(http: &reqwest::Client, port: u16) {
    wait_until(Duration::from_secs(60), "service readiness", || async {
        http.get(format!("http://127.0.0.1:{port}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// The `q` quantile of sorted latencies.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A benchmark setting from the environment.
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
