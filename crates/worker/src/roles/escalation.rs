//! Background role: fires due escalation steps (DESIGN §11). Every worker runs it. An incident's
//! escalation lives in its row (`escalation_*`: the next step, the repeat, when it is due), so
//! timers survive restarts; a worker claims due incidents with `for update skip locked` and, in
//! one transaction per round, resolves each step's targets to people (a schedule: whoever is on
//! call now), queues one notification per (incident, firing, user, contact method) — the unique
//! key makes a second worker's or a retried round's copy a no-op — records the step in the
//! timeline and the change outbox, and moves the escalation on. A worker killed mid-round commits
//! nothing, and the step is due again for the next worker.

use std::time::Duration;

use common::incident::change::record_change;
use common::incident::store::ChangeKind;
use serde::Deserialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;

/// How often an idle worker looks for due steps: a step fires well within 2 s of its due time.
const INTERVAL: Duration = Duration::from_millis(250);
/// Incidents one round fires steps for, at most.
const BATCH: i64 = 50;

/// One step of a policy version, as stored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub escalate_after_minutes: i64,
    pub targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
pub struct Target {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

/// Fires due steps until `shutdown`.
pub async fn run(pool: PgPool, shutdown: CancellationToken) {
    let mut wake = None;
    loop {
        let fired = match round(&pool).await {
            Ok(fired) => fired,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "escalation round failed; retrying");
                0
            }
        };
        if fired >= BATCH as usize {
            continue;
        }
        if wake.is_none() {
            wake = sqlx::postgres::PgListener::connect_with(&pool).await.ok();
            if let Some(listener) = wake.as_mut()
                && listener.listen(common::db::ESCALATION_WAKE_CHANNEL).await.is_err()
            {
                wake = None;
            }
        }
        let woken = async {
            match wake.as_mut() {
                Some(listener) => listener.recv().await.map(drop),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = woken => if result.is_err() { wake = None },
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// The escalation state of an incident with a step due.
struct Due {
    id: String,
    title: String,
    policy_id: String,
    policy_version: i32,
    step: i32,
    repeat_loop: i32,
    firings: i32,
    lag: f64,
}

/// Fires the steps due now, at most [`BATCH`]; returns how many fired.
pub async fn round(pool: &PgPool) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let due: Vec<Due> = sqlx::query(
        "select id, title, escalation_policy_id, escalation_policy_version, escalation_step, escalation_loop,
                escalation_firings, extract(epoch from now() - escalation_next_at)::float8 as lag
         from incidents where escalation_status = 'ACTIVE' and escalation_next_at <= now()
         order by escalation_next_at limit $1 for update skip locked",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|row| {
        Ok(Due {
            id: row.try_get("id")?,
            title: row.try_get("title")?,
            policy_id: row.try_get("escalation_policy_id")?,
            policy_version: row.try_get("escalation_policy_version")?,
            step: row.try_get("escalation_step")?,
            repeat_loop: row.try_get("escalation_loop")?,
            firings: row.try_get("escalation_firings")?,
            lag: row.try_get("lag")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()?;
    for incident in &due {
        fire(&mut tx, incident).await?;
        metrics::histogram!("escalation_lag_seconds").record(incident.lag.max(0.0));
    }
    tx.commit().await?;
    if !due.is_empty() {
        // The notifications queued by these steps are ready to send.
        sqlx::query("select pg_notify($1, '')").bind(super::notify::WAKE_CHANNEL).execute(pool).await?;
    }
    Ok(due.len())
}

/// Fires `incident`'s due step: queues its notifications, records it, and moves on.
async fn fire(tx: &mut PgConnection, incident: &Due) -> anyhow::Result<()> {
    let version: Option<(i32, sqlx::types::Json<Vec<Step>>)> =
        sqlx::query_as("select repeat, steps from escalation_policy_versions where policy_id = $1 and version = $2")
            .bind(&incident.policy_id)
            .bind(incident.policy_version)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((repeat, sqlx::types::Json(steps))) = version else {
        // The policy was deleted after the incident started it: nothing left to fire.
        sqlx::query("update incidents set escalation_status = 'COMPLETED', escalation_next_at = null where id = $1")
            .bind(&incident.id)
            .execute(&mut *tx)
            .await?;
        return Ok(());
    };
    let index = usize::try_from(incident.step).unwrap_or(0).min(steps.len().saturating_sub(1));
    let Some(step) = steps.get(index) else { return Ok(()) };
    let firing = incident.firings + 1;
    let people = resolve(tx, step).await?;
    let queued: Vec<(String, String, String, String)> = sqlx::query_as(
        "insert into notifications (id, incident_id, firing, user_id, contact_method_id, channel, address)
         select 'ntf_' || replace(gen_random_uuid()::text, '-', ''), $1, $2, c.user_id, c.id, c.type, c.address
         from contact_methods c join unnest($3::text[]) with ordinality as p (user_id, n) on p.user_id = c.user_id
         order by p.n, c.created_at, c.id
         on conflict on constraint notifications_once do nothing
         returning user_id, contact_method_id, channel, address",
    )
    .bind(&incident.id)
    .bind(firing)
    .bind(&people)
    .fetch_all(&mut *tx)
    .await?;
    let reached: Vec<&str> = {
        let mut reached: Vec<&str> = queued.iter().map(|(user, ..)| user.as_str()).collect();
        reached.dedup();
        reached
    };
    let unreachable: Vec<&String> = people.iter().filter(|p| !reached.contains(&p.as_str())).collect();
    let nobody = queued.is_empty();
    // The next step: after this one's delay, or at once when nobody could be notified.
    let (mut next_step, mut next_loop) = (incident.step + 1, incident.repeat_loop);
    if usize::try_from(next_step).unwrap_or(usize::MAX) >= steps.len() {
        (next_step, next_loop) = (0, incident.repeat_loop + 1);
    }
    let completed = next_loop > repeat;
    let delay = if nobody { 0 } else { step.escalate_after_minutes * 60 };
    let message = if nobody {
        format!("step {} fired: nobody to notify; escalating at once", index + 1)
    } else {
        format!("step {} fired: notifying {} people", index + 1, reached.len())
    };
    sqlx::query(
        "insert into incident_timeline (incident_id, kind, actor_id, message, data) values ($1, 'escalated', 'system', $2, $3)",
    )
    .bind(&incident.id)
    .bind(&message)
    .bind(json!({
        "step": index + 1, "loop": incident.repeat_loop, "firing": firing,
        "policyId": incident.policy_id, "policyVersion": incident.policy_version,
        "targets": step.targets.iter().map(|t| json!({"type": t.kind, "id": t.id})).collect::<Vec<_>>(),
        "notified": reached, "unreachable": unreachable,
    }))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update incidents set escalation_step = $2, escalation_loop = $3, escalation_firings = $4,
            escalation_status = case when $5 then 'COMPLETED' else 'ACTIVE' end,
            escalation_next_at = case when $5 then null else now() + make_interval(secs => $6) end
         where id = $1",
    )
    .bind(&incident.id)
    .bind(if completed { incident.step } else { next_step })
    .bind(if completed { incident.repeat_loop } else { next_loop })
    .bind(firing)
    .bind(completed)
    .bind(delay as f64)
    .execute(&mut *tx)
    .await?;
    record_change(tx, &incident.id, ChangeKind::Escalated, "system").await?;
    metrics::counter!("escalation_steps_total", "outcome" => if nobody { "nobody" } else { "notified" }).increment(1);
    tracing::info!(incident = %incident.id, title = %incident.title, step = index + 1, firing, "escalation step fired");
    Ok(())
}

/// The people a step's targets are now, in order, each once: a user, or whoever a schedule has
/// on call at this instant (nobody when no one is).
async fn resolve(tx: &mut PgConnection, step: &Step) -> anyhow::Result<Vec<String>> {
    let now = jiff::Timestamp::now();
    let mut people: Vec<String> = Vec::new();
    for target in &step.targets {
        let person = match target.kind.as_str() {
            "schedule" => common::schedule::store::load(tx, &target.id)
                .await?
                .and_then(|schedule| schedule.who_at(now).map(|(user, _)| user.to_owned())),
            _ => Some(target.id.clone()),
        };
        if let Some(person) = person.filter(|p| !people.contains(p)) {
            people.push(person);
        }
    }
    Ok(people)
}
