//! Real alert senders against ingest: Prometheus Alertmanager (its PagerDuty receiver pointed at
//! `/v2/enqueue` and its webhook receiver at `/api/integrations/alertmanager`), alerts injected
//! with `amtool`; and the `pdpyras` Python client's `EventsAPISession`.

use std::process::Command;
use std::time::Duration;

use e2e::servers::PrivateAlertmanager;
use e2e::{TestEnv, wait_until};

async fn statuses(env: &TestEnv, service_id: &str) -> Vec<(String, i32)> {
    sqlx::query_as("select status, alert_count from incidents where service_id = $1 order by created_at")
        .bind(service_id)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_pages_open_and_resolve_incidents_through_both_receivers() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let paged = env.service("via PagerDuty receiver").await;
    let hooked = env.service("via webhook receiver").await;
    let config = format!(
        "route:
  receiver: both
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: both
    pagerduty_configs:
      - routing_key: {pd_key}
        url: {ingest}/v2/enqueue
        send_resolved: true
    webhook_configs:
      - url: {ingest}/api/integrations/alertmanager?routing_key={hook_key}
        send_resolved: true
",
        pd_key = paged.routing_key,
        hook_key = hooked.routing_key,
    );
    let alertmanager = PrivateAlertmanager::start(&config);
    let labels = ["alertname=DiskFull", "severity=critical", "instance=web-01"];
    let mut firing = vec!["alert", "add"];
    firing.extend(labels);
    firing.push("--annotation=summary=Disk full on web-01");
    alertmanager.amtool(&firing);

    wait_until(Duration::from_secs(60), "both receivers to open an incident", || async {
        statuses(&env, &paged.id).await.len() == 1 && statuses(&env, &hooked.id).await.len() == 1
    })
    .await;
    // Alertmanager re-sends a firing group every repeat_interval, to both receivers at once.
    // Through PagerDuty's API each re-send adds to the alert count of the same open incident; the
    // webhook's event ids come from the alert's content, so a re-send of the same firing alert is
    // the same event and is not counted again (DESIGN §3 "Retries are safe").
    wait_until(Duration::from_secs(60), "two re-sends to reach the PagerDuty receiver", || async {
        let a = statuses(&env, &paged.id).await;
        a.len() == 1 && a[0].1 >= 3
    })
    .await;
    for service in [&paged, &hooked] {
        let incidents = statuses(&env, &service.id).await;
        assert_eq!(incidents.len(), 1, "re-sends open no new incident");
        assert_eq!(incidents[0].0, "OPEN");
    }
    assert_eq!(statuses(&env, &hooked.id).await[0].1, 1, "a re-sent webhook alert was counted again");
    let (title, urgency): (String, String) =
        sqlx::query_as("select title, urgency from incidents where service_id = $1")
            .bind(&hooked.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((title.as_str(), urgency.as_str()), ("Disk full on web-01", "HIGH"));

    // Ending the alert makes Alertmanager send resolve to both.
    let now = jiff::Timestamp::now().to_string();
    let end = format!("--end={now}");
    let mut resolved = vec!["alert", "add"];
    resolved.extend(labels);
    resolved.push(&end);
    alertmanager.amtool(&resolved);
    wait_until(Duration::from_secs(60), "both incidents to be resolved", || async {
        let (a, b) = (statuses(&env, &paged.id).await, statuses(&env, &hooked.id).await);
        a.len() == 1 && b.len() == 1 && a[0].0 == "RESOLVED" && b[0].0 == "RESOLVED"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdpyras_triggers_acknowledges_and_resolves() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let service = env.service("Databases").await;
    let script = r#"
import os, warnings
warnings.simplefilter("ignore")
import pdpyras
session = pdpyras.EventsAPISession(os.environ["ROUTING_KEY"])
session.url = os.environ["BASE_URL"]
key = session.trigger("CPU above 90% on db-01", "db-01", severity="critical", custom_details={"load": 9.5})
session.acknowledge(key)
session.resolve(key)
print(key)
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .env("ROUTING_KEY", &service.routing_key)
        .env("BASE_URL", &ingest)
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "pdpyras: {}", String::from_utf8_lossy(&output.stderr));
    let dedup_key = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(!dedup_key.is_empty());
    env.wait_for_applied(3, Duration::from_secs(30)).await;
    let (status, acknowledged, details): (String, bool, Option<String>) = sqlx::query_as(
        "select status, acknowledged_at is not null, description from incidents where service_id = $1 and dedup_key = $2",
    )
    .bind(&service.id)
    .bind(&dedup_key)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), acknowledged), ("RESOLVED", true));
    assert!(details.unwrap().contains("9.5"));
}
