//! Private servers for fault tests: each starts its own NATS, Redis or PostgreSQL on a free
//! loopback port from the installed binaries, so killing it never touches the shared services.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Makes, in `dir`, a CA (`ca.pem`), a server certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`) and a client certificate (`client.pem`, `client.key`), with `openssl`.
pub fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl").args(args).current_dir(dir).stderr(Stdio::null()).status();
        assert!(status.expect("openssl is installed").success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName = IP:127.0.0.1\n").expect("san");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    let client = "/CN=opssentinal";
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", client, "-keyout", "client.key", "-out", "client.csr"]);
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage = clientAuth\n").expect("client ext");
    let sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"];
    let mut args = vec!["x509", "-req", "-in", "client.csr", "-extfile", "client.ext", "-out", "client.pem"];
    args.extend(sign);
    run(&args);
}

/// A free loopback port (the listener is closed before the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Waits (at most 20 s) until something listens on `port`; false if `exited` says the server
/// gave up first.
fn wait_for_port_unless(port: u16, what: &str, mut exited: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if exited() {
            return false;
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn wait_for_port(port: u16, what: &str) {
    wait_for_port_unless(port, what, || false);
}

/// Spawns `command` and waits until it listens on `port`; `None` if it exited first (most often
/// because another test took the port between `free_port` releasing it and the server binding
/// it: the caller starts again on a new port).
fn spawn_listening(command: &mut Command, port: u16, what: &str) -> Option<Process> {
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the server is installed");
    let mut process = Process(child);
    let listening = wait_for_port_unless(port, what, || process.0.try_wait().ok().flatten().is_some());
    listening.then_some(process)
}

/// Three tries at `start` on a fresh free port each time.
fn on_a_free_port<T>(what: &str, mut start: impl FnMut(u16) -> Option<T>) -> T {
    (0..3).find_map(|_| start(free_port())).unwrap_or_else(|| panic!("{what} did not start in three attempts"))
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("opssentinal-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A process killed (SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _reaped = self.0.wait();
    }
}

/// A private nats-server with JetStream.
pub struct PrivateNats {
    pub port: u16,
    process: Option<Process>,
    store: PathBuf,
    /// A configuration file (TLS, users), when the server needs more than flags.
    config: Option<PathBuf>,
}

impl PrivateNats {
    pub fn start() -> Self {
        on_a_free_port("nats-server", |port| {
            let mut nats = Self { port, process: None, store: scratch_dir("nats"), config: None };
            nats.process = spawn_listening(&mut nats.command(), port, "nats-server");
            nats.process.is_some().then_some(nats)
        })
    }

    /// A server that requires TLS with a certificate for 127.0.0.1 signed by a CA made for the
    /// occasion (`openssl`), a client certificate signed by it (`client.pem`, `client.key` beside
    /// the CA), and user `user` with password `secret`. Returns it and the CA's path.
    pub fn start_tls() -> (Self, PathBuf) {
        let store = scratch_dir("nats-tls");
        make_certificates(&store);
        let port = free_port();
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n\
             tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}\n\
             authorization {{ user: \"user\", password: \"secret\" }}\n",
            store.join("js").display(),
            store.join("server.pem").display(),
            store.join("server.key").display(),
            store.join("ca.pem").display()
        );
        let path = store.join("nats.conf");
        std::fs::write(&path, config).expect("nats config");
        let ca = store.join("ca.pem");
        let mut nats = Self { port, process: None, store, config: Some(path) };
        nats.restart();
        (nats, ca)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.process = spawn_listening(&mut self.command(), self.port, "nats-server");
        assert!(self.process.is_some(), "nats-server exited instead of listening on {}", self.port);
    }

    fn command(&self) -> Command {
        let mut command = Command::new("nats-server");
        match &self.config {
            Some(config) => command.arg("-c").arg(config),
            None => command.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"]).arg(&self.store),
        };
        command
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.process = None;
        let _removed = std::fs::remove_dir_all(&self.store);
    }
}

/// A private redis-server that keeps nothing on disk.
pub struct PrivateRedis {
    pub port: u16,
    process: Option<Process>,
    /// Serves TLS only, with certificates made in this directory (see [`make_certificates`]).
    tls: Option<PathBuf>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        on_a_free_port("redis-server", |port| {
            let mut redis = Self { port, process: None, tls: None };
            redis.process = spawn_listening(&mut redis.command(), port, "redis-server");
            redis.process.is_some().then_some(redis)
        })
    }

    /// A server speaking only TLS, with a certificate for 127.0.0.1 signed by a CA made for the
    /// occasion; returns it and the CA's path. Its URL is `rediss://127.0.0.1:<port>`.
    pub fn start_tls() -> (Self, PathBuf) {
        let dir = scratch_dir("redis-tls");
        make_certificates(&dir);
        let ca = dir.join("ca.pem");
        let mut redis = Self { port: free_port(), process: None, tls: Some(dir) };
        redis.restart();
        (redis, ca)
    }

    /// Starts it (again) on the same port, empty.
    pub fn restart(&mut self) {
        self.process = spawn_listening(&mut self.command(), self.port, "redis-server");
        assert!(self.process.is_some(), "redis-server exited instead of listening on {}", self.port);
    }

    fn command(&self) -> Command {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match &self.tls {
            Some(dir) => command
                .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no", "--tls-cert-file"])
                .arg(dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.pem")),
            None => command.args(["--port", &port]),
        };
        command
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        self.process = None;
    }
}

/// A private PostgreSQL cluster (initdb in a scratch directory), run as the `postgres` user
/// when the tests run as root.
pub struct PrivatePostgres {
    pub port: u16,
    data: PathBuf,
    bin: PathBuf,
    /// Serves TLS with `server.pem`/`server.key` from its data directory (see [`make_certificates`]).
    ssl: bool,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A server that also speaks TLS, with a certificate for 127.0.0.1 signed by a CA made for
    /// the occasion; returns it and the CA's path.
    pub fn start_tls() -> (Self, PathBuf) {
        let pg = Self::start_with(true);
        let ca = pg.data.join("ca.pem");
        (pg, ca)
    }

    fn start_with(ssl: bool) -> Self {
        let bin = postgres_bin_dir();
        let data = scratch_dir("pg");
        let port = free_port();
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).status().expect("chown");
            assert!(status.success(), "chown scratch dir");
        }
        let initdb = bin.join("initdb");
        let status = as_postgres(&initdb)
            .args(["-D", &data.to_string_lossy(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        if ssl {
            make_certificates(&data);
            if is_root() {
                let status =
                    Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).status().expect("chown");
                assert!(status.success(), "chown certificates");
            }
            let status = Command::new("chmod").arg("600").arg(data.join("server.key")).status().expect("chmod");
            assert!(status.success(), "chmod key");
        }
        let pg = Self { port, data, bin, ssl };
        pg.ctl("start");
        wait_for_port(port, "postgres");
        pg
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no clean shutdown, like a crash).
    pub fn stop(&self) {
        self.ctl("stop");
    }

    pub fn start_again(&self) {
        self.ctl("start");
        wait_for_port(self.port, "postgres");
    }

    fn ctl(&self, action: &str) {
        let mut options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.data.display());
        if self.ssl {
            options.push_str(" -c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key");
        }
        let mut command = as_postgres(&self.bin.join("pg_ctl"));
        command.args(["-D", &self.data.to_string_lossy(), "-w", "-l"]).arg(self.data.join("log"));
        match action {
            "stop" => command.args(["-m", "immediate", "stop"]),
            _ => command.args(["-o", &options, "start"]),
        };
        let status = command.stdout(Stdio::null()).stderr(Stdio::null()).status().expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl {action} failed");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _stopped = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D", &self.data.to_string_lossy(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _removed = std::fs::remove_dir_all(&self.data);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// The newest installed PostgreSQL's binaries (Debian keeps them out of PATH).
fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).filter(|p| p.join("initdb").exists()).collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        let output = Command::new("pg_config").arg("--bindir").output().expect("PostgreSQL is installed");
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

/// A private Prometheus Alertmanager (Debian's `prometheus-alertmanager`), clustering off.
pub struct PrivateAlertmanager {
    pub port: u16,
    _process: Process,
    dir: PathBuf,
}

impl PrivateAlertmanager {
    /// Starts Alertmanager with `config` (YAML).
    pub fn start(config: &str) -> Self {
        let dir = scratch_dir("alertmanager");
        std::fs::write(dir.join("alertmanager.yml"), config).expect("write config");
        let port = free_port();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager is installed (scripts/test.sh installs it)");
        wait_for_port(port, "alertmanager");
        Self { port, _process: Process(child), dir }
    }

    /// Runs `amtool` against this Alertmanager; panics unless it succeeds.
    pub fn amtool(&self, args: &[&str]) {
        let output = Command::new("amtool")
            .arg(format!("--alertmanager.url=http://127.0.0.1:{}", self.port))
            .args(args)
            .output()
            .expect("amtool is installed");
        assert!(output.status.success(), "amtool {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

impl Drop for PrivateAlertmanager {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}

/// One of our service binaries (`opssentinal-ingest`, `-query-api`, `-worker`) as a real process
/// with its HTTP endpoint on its own port; killed (SIGKILL) when dropped.
pub struct ServiceProcess {
    child: Child,
    pub port: u16,
    binary: String,
    env: Vec<(String, String)>,
}

impl ServiceProcess {
    /// Starts `binary` with `env`, listening on a free port.
    pub fn start(binary: &str, env: &[(&str, String)]) -> Self {
        let port = free_port();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        Self { child: spawn_service(binary, &env, port), port, binary: binary.to_owned(), env }
    }

    /// Kills the process (SIGKILL) and starts it again on the same port.
    pub fn restart(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
        self.child = spawn_service(&self.binary, &self.env, self.port);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`-TERM`, `-KILL`, …).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }

    /// Waits at most `timeout` for the process to exit; how long it took, or `None`.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            if self.child.try_wait().expect("try_wait").is_some() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// A counter or gauge from this process's `/metrics` (0 when not yet exported).
    /// The cumulative buckets (`le`, count) of a histogram from this process's `/metrics`.
    pub async fn histogram(&self, http: &reqwest::Client, name: &str) -> Vec<(f64, f64)> {
        let url = format!("{}/metrics", self.url());
        let Ok(response) = http.get(url).send().await else { return Vec::new() };
        let text = response.text().await.unwrap_or_default();
        let prefix = format!("{name}_bucket{{le=\"");
        text.lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"}")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, count.trim().parse().ok()?))
            })
            .collect()
    }

    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> f64 {
        let url = format!("{}/metrics", self.url());
        let Ok(response) = http.get(url).send().await else { return 0.0 };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            .filter_map(|rest| rest.rsplit(' ').next()?.trim().parse::<f64>().ok())
            .sum()
    }

    /// Whether `/readyz` answers 200.
    pub async fn is_ready(&self, http: &reqwest::Client) -> bool {
        self.readiness(http).await.is_some_and(|(status, _)| status == 200)
    }

    /// Waits (at most `timeout`) until `/readyz` answers 200.
    pub async fn wait_ready(&self, http: &reqwest::Client, timeout: Duration) {
        let what = format!("{} on port {} to be ready", self.binary, self.port);
        crate::wait_until(timeout, &what, || self.is_ready(http)).await;
    }

    /// `/readyz`: status and body.
    pub async fn readiness(&self, http: &reqwest::Client) -> Option<(u16, serde_json::Value)> {
        let response = http.get(format!("{}/readyz", self.url())).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }
}

fn spawn_service(binary: &str, env: &[(String, String)], port: u16) -> Child {
    let listen = match binary {
        "opssentinal-ingest" => "INGEST_LISTEN",
        "opssentinal-query-api" => "QUERY_API_LISTEN",
        _ => "WORKER_LISTEN",
    };
    Command::new(crate::service_binary(binary))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(listen, format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary} starts: {e}"))
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

/// A private three-node JetStream cluster on loopback ports (routes between all three), each node
/// with its own store; nodes can be killed (SIGKILL) and restarted one at a time.
pub struct PrivateNatsCluster {
    ports: Vec<u16>,
    /// The nodes' monitoring ports (`/jsz` says whether JetStream has a meta leader).
    monitors: Vec<u16>,
    configs: Vec<PathBuf>,
    nodes: Vec<Option<Process>>,
    dir: PathBuf,
}

impl PrivateNatsCluster {
    /// Starts the three nodes and waits until they formed one JetStream cluster. Ports are picked
    /// free and then released, so another test may take one first: a node that exits instead of
    /// listening, or nodes that do not elect a JetStream meta leader within 20 s (a route port
    /// taken by another process), make the whole cluster start again on new ports (three attempts).
    pub fn start() -> Self {
        for _attempt in 0..3 {
            let mut cluster = Self::configure();
            if (0..3).all(|i| cluster.spawn(i)) && cluster.formed() {
                return cluster;
            }
        }
        panic!("a three-node nats-server cluster did not start in three attempts");
    }

    /// Waits (at most 20 s) until every node's `/jsz` names a meta leader of a three-node cluster.
    fn formed(&self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if self.monitors.iter().all(|&port| meta_cluster_formed(port)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn configure() -> Self {
        let dir = scratch_dir("nats-cluster");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let monitors: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let configs = (0..3)
            .map(|i| {
                let others: Vec<String> =
                    (0..3).filter(|j| *j != i).map(|j| format!("\"nats-route://127.0.0.1:{}\"", routes[j])).collect();
                let config = format!(
                    "server_name: n{i}\nlisten: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: \"ostest\", listen: \"127.0.0.1:{}\", routes: [{}] }}\n",
                    ports[i],
                    monitors[i],
                    dir.join(format!("n{i}")).display(),
                    routes[i],
                    others.join(", ")
                );
                let path = dir.join(format!("n{i}.conf"));
                std::fs::write(&path, config).expect("cluster config");
                path
            })
            .collect();
        Self { ports, monitors, configs, nodes: vec![None, None, None], dir }
    }

    /// Starts `node`; false if it exited instead of listening.
    fn spawn(&mut self, node: usize) -> bool {
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.configs[node])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.ports[node])).is_err() {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start listening on {}",
                self.ports[node]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.nodes[node] = Some(Process(child));
        true
    }

    /// The three client URLs, comma-separated: what `NATS_URL` takes.
    pub fn seeds(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    pub fn url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[node])
    }

    pub fn kill(&mut self, node: usize) {
        self.nodes[node] = None;
    }

    pub fn restart(&mut self, node: usize) {
        assert!(self.spawn(node), "nats-server node {node} exited on restart (its port was taken?)");
    }
}

/// Whether the nats-server monitoring on `port` reports a JetStream meta leader among three peers.
fn meta_cluster_formed(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _timeout = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).is_err() {
        return false;
    }
    let Some((_, body)) = response.split_once("\r\n\r\n") else { return false };
    let Ok(jsz) = serde_json::from_str::<serde_json::Value>(body) else { return false };
    let meta = &jsz["meta_cluster"];
    meta["leader"].as_str().is_some_and(|leader| !leader.is_empty()) && meta["cluster_size"].as_u64() == Some(3)
}

impl Drop for PrivateNatsCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private `nats-server` in operator mode (JWT authentication, the accounts preloaded), with
/// one account allowed JetStream and a user in it; returns the server and the user's `.creds`
/// file, as `nsc` would write it. The keys and JWTs are made here.
pub fn start_nats_with_creds() -> (PrivateNats, PathBuf) {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwt = |issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value| {
        let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let claims = serde_json::json!({
            "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
            "iat": jiff::Timestamp::now().as_second(),
            "iss": issuer.public_key(),
            "name": "opssentinal-test",
            "sub": subject,
            "nats": nats,
        });
        let signed = format!("{header}.{}", b64(claims.to_string().as_bytes()));
        let signature = issuer.sign(signed.as_bytes()).expect("sign");
        format!("{signed}.{}", b64(&signature))
    };
    let (operator, account, user) =
        (nkeys::KeyPair::new_operator(), nkeys::KeyPair::new_account(), nkeys::KeyPair::new_user());
    let operator_jwt = jwt(&operator, &operator.public_key(), serde_json::json!({"type": "operator", "version": 2}));
    let unlimited = serde_json::json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1});
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(&operator, &system.public_key(), serde_json::json!({"type": "account", "version": 2}));
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        serde_json::json!({"type": "user", "version": 2,
        "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    let store = scratch_dir("nats-creds");
    let port = free_port();
    let config = format!(
        "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\noperator: \"{operator_jwt}\"\n\
         system_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{ {}: \"{account_jwt}\", {}: \"{system_jwt}\" }}\n",
        store.join("js").display(),
        system.public_key(),
        account.public_key(),
        system.public_key()
    );
    let path = store.join("nats.conf");
    std::fs::write(&path, config).expect("nats config");
    let creds = store.join("user.creds");
    let seed = user.seed().expect("seed");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .expect("creds");
    let mut nats = PrivateNats { port, process: None, store, config: Some(path) };
    nats.restart();
    (nats, creds)
}

/// A real webhook receiver (`tests/support/webhook_receiver.py`) that verifies each delivery's
/// signature with the Standard Webhooks reference library (PyPI `standardwebhooks`) and answers
/// as configured.
pub struct WebhookReceiver {
    pub port: u16,
    _process: Process,
}

impl WebhookReceiver {
    pub fn start() -> Self {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/webhook_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the webhook receiver");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the receiver prints its port");
        let port = line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).unwrap_or_else(|| {
            panic!("the receiver did not start (is standardwebhooks installed? scripts/test.sh installs it): {line}")
        });
        Self { port, _process: Process(child) }
    }

    /// The URL deliveries are posted to (`path` after the port).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sets how it verifies and answers (see the script): `secret`, `responses`, `default`,
    /// `hang_seconds`, `retry_after`.
    pub async fn configure(&self, http: &reqwest::Client, config: serde_json::Value) {
        let response =
            http.post(self.url("/_control/config")).json(&config).send().await.expect("the receiver answers");
        assert_eq!(response.status().as_u16(), 204, "{}", response.text().await.unwrap_or_default());
    }

    /// Every delivery received so far, in arrival order.
    pub async fn received(&self, http: &reqwest::Client) -> Vec<serde_json::Value> {
        let response = http.get(self.url("/_control/received")).send().await.expect("the receiver answers");
        let body: serde_json::Value = response.json().await.expect("JSON");
        body["received"].as_array().cloned().unwrap_or_default()
    }
}

/// A real SMTP server (`tests/support/smtp_sink.py`, on PyPI `aiosmtpd`): plain SMTP, no TLS and
/// no authentication, that keeps every message it accepts and rejects at DATA as configured;
/// a JSON control API on a second port lists what arrived.
pub struct SmtpSink {
    pub smtp_port: u16,
    /// The control API's port (`/messages`, `/rejected`, `/configure`).
    pub http_port: u16,
    _process: Process,
}

impl SmtpSink {
    pub fn start() -> Self {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--smtp-port", "0", "--http-port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the SMTP sink");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the sink prints its ports");
        let ports = line.trim().strip_prefix("listening ").and_then(|ports| {
            let (smtp, http) = ports.split_once(' ')?;
            Some((smtp.parse().ok()?, http.parse().ok()?))
        });
        let (smtp_port, http_port) = ports.unwrap_or_else(|| {
            panic!("the SMTP sink did not start (is aiosmtpd installed? scripts/test.sh installs it): {line}")
        });
        Self { smtp_port, http_port, _process: Process(child) }
    }

    /// What an SMTP relay setting takes: `smtp://127.0.0.1:<port>`.
    pub fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.smtp_port)
    }

    fn control_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// Sets how it answers (see the script): `reject` (the next N messages get
    /// `451 4.3.0 try again later` at DATA), `rejectPermanent` (the next N after those get
    /// `550 5.1.1 no such user`).
    pub async fn configure(&self, http: &reqwest::Client, config: serde_json::Value) {
        let response = http.post(self.control_url("/configure")).json(&config).send().await.expect("the sink answers");
        assert_eq!(response.status().as_u16(), 204, "{}", response.text().await.unwrap_or_default());
    }

    /// Every message accepted so far, in arrival order: `from` (the envelope sender), `to` (the
    /// envelope recipients), `subject` (decoded), `messageId`, `body` (the text/plain part,
    /// decoded, lines ending in `\n`), `receivedAt` (unix seconds).
    pub async fn messages(&self, http: &reqwest::Client) -> Vec<serde_json::Value> {
        self.list(http, "/messages").await
    }

    /// Every message rejected at DATA so far, in arrival order: as [`Self::messages`] plus
    /// `code` (451 or 550).
    pub async fn rejected(&self, http: &reqwest::Client) -> Vec<serde_json::Value> {
        self.list(http, "/rejected").await
    }

    async fn list(&self, http: &reqwest::Client, path: &str) -> Vec<serde_json::Value> {
        let response = http.get(self.control_url(path)).send().await.expect("the sink answers");
        let body: serde_json::Value = response.json().await.expect("JSON");
        body.as_array().cloned().unwrap_or_default()
    }
}
