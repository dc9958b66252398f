//! What operators deploy (`deploy/`): the Kubernetes manifests validate against the Kubernetes
//! schemas (`kubernetes-validate`, offline), the alert rules parse (`promtool check rules`),
//! every metric the Grafana dashboard and the alert rules use is exported by the running services,
//! and the consumer KEDA scales on is one a running worker creates.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use e2e::servers::ServiceProcess;
use e2e::{TestEnv, trigger};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").join("deploy")
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(deploy_dir())
        .output()
        .unwrap_or_else(|e| panic!("{program} is installed (scripts/test.sh installs it): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

#[test]
fn the_kubernetes_manifests_validate_and_fit_the_services() {
    let files: Vec<String> = std::fs::read_dir(deploy_dir().join("kubernetes"))
        .unwrap()
        .map(|e| format!("kubernetes/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let report = run("kubernetes-validate", &args);
    assert!(!report.contains("ERROR") && !report.contains("FAIL"), "{report}");
    // Kinds without a Kubernetes schema (KEDA's ScaledObject) are checked here instead.
    let unknown: Vec<&str> = report.lines().filter(|l| l.contains("Couldn't find schema")).collect();
    assert!(unknown.iter().all(|l| l.contains("ScaledObject")), "{unknown:?}");
    let check = r#"
import glob, sys, yaml
docs = [d for f in sorted(glob.glob("kubernetes/*.yaml")) for d in yaml.safe_load_all(open(f)) if d]
kinds = {}
for d in docs: kinds.setdefault(d["kind"], []).append(d)
config = kinds["ConfigMap"][0]["data"]
timeout = int(config["SHUTDOWN_TIMEOUT_SECS"])
deployments = {d["metadata"]["name"]: d for d in kinds["Deployment"]}
assert set(deployments) == {"opssentinal-ingest", "opssentinal-query-api", "opssentinal-worker"}, deployments.keys()
pdbs = {tuple(sorted(p["spec"]["selector"]["matchLabels"].items())) for p in kinds["PodDisruptionBudget"]}
for name, d in deployments.items():
    spec = d["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > timeout, name
    c = spec["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
    assert tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) in pdbs, name + " has no PodDisruptionBudget"
scaled = kinds["ScaledObject"][0]["spec"]
assert scaled["scaleTargetRef"]["name"] == "opssentinal-worker"
trigger = scaled["triggers"][0]
assert trigger["type"] == "nats-jetstream"
assert int(trigger["metadata"]["lagThreshold"]) > 0 and scaled["minReplicaCount"] >= 1
print("ok")
"#;
    assert_eq!(run("python3", &["-c", check]).trim(), "ok");
}

/// Metric names in PromQL expressions: identifiers ending the way our metrics do.
fn metric_names(expressions: &[String]) -> BTreeSet<String> {
    let suffixes =
        ["_total", "_seconds", "_bucket", "_sum", "_count", "_bytes", "_backlog", "_owned", "_up", "_size", "_events"];
    let mut names = BTreeSet::new();
    for expr in expressions {
        let mut current = String::new();
        for c in expr.chars().chain([' ']) {
            if c.is_ascii_alphanumeric() || c == '_' {
                current.push(c);
            } else {
                if current.contains('_') && suffixes.iter().any(|s| current.ends_with(s)) {
                    let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| current.strip_suffix(s));
                    names.insert(base.unwrap_or(&current).to_owned());
                }
                current.clear();
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_parse_and_every_metric_dashboards_and_rules_use_is_exported() {
    run("promtool", &["check", "rules", "prometheus/alerts.yml"]);
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yml")).unwrap();
    let mut expressions: Vec<String> =
        rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")).map(str::to_owned).collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_dir().join("grafana/opssentinal.json")).unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        expressions.extend(panel["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()));
    }
    let used = metric_names(&expressions);
    assert!(used.len() > 15, "{used:?}");

    // The services as deployed (separate processes), after one event went through.
    let env = TestEnv::new().await;
    let mut vars = env.service_env();
    vars.push(("NATS_STREAM_MAX_BYTES", "1073741824".into()));
    let services: Vec<ServiceProcess> = ["opssentinal-ingest", "opssentinal-query-api", "opssentinal-worker"]
        .into_iter()
        .map(|binary| ServiceProcess::start(binary, &vars))
        .collect();
    for service in &services {
        service.wait_ready(&env.http, Duration::from_secs(30)).await;
    }
    let key = env.admin_key().await;
    let rk = env.service("Metrics").await.routing_key;
    assert_eq!(env.post_event(&services[0].url(), &key, &trigger(&rk, "m", "metrics")).await.status(), 202);
    env.wait_for_applied(1, Duration::from_secs(30)).await;
    let (status, _) = env.get_json(&format!("{}/api/incidents", services[1].url()), &key).await;
    assert_eq!(status, 200);

    // KEDA's trigger names the default stream and a consumer the running worker really made
    // (this test's worker runs with the default consumer base, on a stream of its own).
    let keda = run(
        "python3",
        &[
            "-c",
            r#"
import glob, yaml
docs = [d for f in sorted(glob.glob("kubernetes/*.yaml")) for d in yaml.safe_load_all(open(f)) if d]
meta = [d for d in docs if d["kind"] == "ScaledObject"][0]["spec"]["triggers"][0]["metadata"]
print(meta["stream"], meta["consumer"])
"#,
        ],
    );
    let (stream, consumer) = keda.trim().split_once(' ').expect("stream and consumer");
    let defaults = <worker::WorkerConfig as clap::Parser>::try_parse_from(["opssentinal-worker"]).unwrap();
    assert_eq!(stream, defaults.nats.stream, "KEDA watches another stream than the services use");
    assert_eq!(env.consumer, defaults.worker.consumer);
    let created = env.consumer_names().await;
    assert!(created.iter().any(|name| name == consumer), "KEDA watches {consumer}, the worker made {created:?}");

    // Gauges are set by background tasks: give them a few seconds, then name what is missing.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let missing = loop {
        let mut exported = BTreeSet::new();
        for service in &services {
            let text = env.http.get(format!("{}/metrics", service.url())).send().await.unwrap().text().await.unwrap();
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
                exported.insert(base.to_owned());
            }
        }
        let missing: Vec<String> = used.difference(&exported).cloned().collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(missing.is_empty(), "used by the dashboard or the alert rules but not exported: {missing:?}");
}
