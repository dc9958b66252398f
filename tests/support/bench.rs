//! Helpers shared by the benchmarks: the release binaries as separate processes, and statistics.

use std::time::Duration;

/// How long a benchmark waits for a service to be ready.
pub const READY: Duration = Duration::from_secs(60);

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

/// CPU time (user + system, in clock ticks) of a process so far.
fn cpu_ticks(pid: u32) -> Option<u64> {
    Some(stat_ticks(pid)?.iter().take(2).sum())
}

/// utime, stime, cutime and cstime (children waited for) of a process, in clock ticks.
fn stat_ticks(pid: u32) -> Option<[u64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3: utime is 14.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some([tick(11)?, tick(12)?, tick(13)?, tick(14)?])
}

/// Processes whose command name is `comm` (e.g. every PostgreSQL backend).
fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .collect()
}

/// The shared servers and the benchmark itself, measured beside the named service processes.
const SYSTEM: [(&str, &str); 3] = [("postgres", "postgres"), ("nats", "nats-server"), ("redis", "redis-server")];

/// CPU used by each process (or group of processes) between `start` and `stop`.
pub struct CpuClock {
    named: Vec<(String, u32)>,
    before: Vec<(String, u64)>,
    started: std::time::Instant,
}

/// CPU used over a window, in percent of one core, by process name.
pub struct CpuUse(Vec<(String, f64)>);

impl CpuClock {
    pub fn start(named: Vec<(String, u32)>) -> Self {
        let before = Self::sample(&named);
        Self { named, before, started: std::time::Instant::now() }
    }

    fn sample(named: &[(String, u32)]) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> =
            named.iter().map(|(name, pid)| (name.clone(), cpu_ticks(*pid).unwrap_or(0))).collect();
        for (name, comm) in SYSTEM {
            all.push((name.to_owned(), pids_named(comm).into_iter().filter_map(cpu_ticks).sum()));
        }
        // The load generator: this process, and wrk once it has exited and been waited for.
        all.push(("benchmark".to_owned(), stat_ticks(std::process::id()).map_or(0, |t| t.iter().sum())));
        all
    }

    pub fn stop(self) -> CpuUse {
        let elapsed = self.started.elapsed().as_secs_f64();
        let after = Self::sample(&self.named);
        // /proc counts in USER_HZ, 100 on Linux.
        CpuUse(
            self.before
                .iter()
                .zip(after)
                .map(|((name, before), (_, after))| {
                    (name.clone(), after.saturating_sub(*before) as f64 / 100.0 / elapsed * 100.0)
                })
                .collect(),
        )
    }
}

impl CpuUse {
    pub fn percent(&self) -> &[(String, f64)] {
        &self.0
    }

    pub fn summary(&self) -> String {
        let total: f64 = self.0.iter().map(|(_, p)| p).sum();
        let parts: Vec<String> = self.0.iter().map(|(name, p)| format!("{name} {p:.0}")).collect();
        format!("{}; total {total:.0}", parts.join(", "))
    }
}

/// A process's peak resident memory (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// A process held to a share of one core: a cgroup (v1 `cpu` controller) of its own with
/// `cpu.cfs_quota_us` = `cores` × `cpu.cfs_period_us`, as an operator gives a worker a small CPU
/// limit. The cgroup is removed when dropped (after the process exited).
pub struct CpuCap {
    dir: std::path::PathBuf,
}

impl CpuCap {
    const PERIOD_US: u64 = 100_000;

    /// Holds `pid` to `cores` of a core (0.05: 5 ms of every 100 ms).
    pub fn apply(pid: u32, cores: f64) -> Self {
        let root = std::path::Path::new("/sys/fs/cgroup/cpu");
        assert!(
            root.join("cpu.cfs_quota_us").exists(),
            "BENCH_WORKER_CPU needs the cgroup v1 cpu controller at {}",
            root.display()
        );
        let dir = root.join(format!("opssentinal-bench-{}-{pid}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the worker's cgroup (run as root)");
        let quota = (cores * Self::PERIOD_US as f64).round().max(1000.0) as u64;
        std::fs::write(dir.join("cpu.cfs_period_us"), Self::PERIOD_US.to_string()).expect("cpu.cfs_period_us");
        std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).expect("cpu.cfs_quota_us");
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move the worker into its cgroup");
        Self { dir }
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        remove_cgroup(&self.dir);
    }
}

/// A process held to `bytes` of memory: a cgroup (v1 `memory` controller) of its own with
/// `memory.limit_in_bytes`, as a container's memory limit would; the kernel kills the process
/// past it. Removed when dropped (after the process exited).
pub struct MemoryCap {
    dir: std::path::PathBuf,
}

impl MemoryCap {
    pub fn apply(pid: u32, bytes: u64) -> Self {
        let root = std::path::Path::new("/sys/fs/cgroup/memory");
        assert!(root.join("memory.limit_in_bytes").exists(), "no cgroup v1 memory controller at {}", root.display());
        let dir = root.join(format!("opssentinal-test-{}-{pid}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the process's memory cgroup (run as root)");
        std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).expect("memory.limit_in_bytes");
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move the process into its cgroup");
        Self { dir }
    }

    /// How many times the kernel refused the process memory at its limit.
    pub fn failures(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.failcnt")).ok().and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for MemoryCap {
    fn drop(&mut self) {
        remove_cgroup(&self.dir);
    }
}

/// Removes a cgroup of ours: one with a process left in it cannot go, so this waits (at most
/// 2 s) for its process to have exited.
fn remove_cgroup(dir: &std::path::Path) {
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
