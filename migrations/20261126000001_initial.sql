-- OpsSentinal initial schema. Invariants live here: one open incident per (service, dedup key),
-- one row per accepted event, one lock row per (service, dedup key).

create table users (
    id            text primary key,
    name          text not null,
    email         text not null,
    password_hash text not null,
    role          text not null constraint users_role_check check (role in ('admin', 'responder', 'user')),
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);
create unique index users_email_key on users (lower(email));

create table api_keys (
    id           text primary key,
    user_id      text not null references users (id) on delete cascade,
    name         text not null,
    -- the first characters of the key, shown in listings so a key can be recognised
    prefix       text not null,
    -- SHA-256 of the whole key; the key itself is never stored
    key_hash     bytea not null constraint api_keys_key_hash_key unique,
    scopes       text[] not null,
    -- requests per minute for this key; null means the service default
    rate_limit   integer constraint api_keys_rate_limit_check check (rate_limit > 0),
    created_at   timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
create index api_keys_user_idx on api_keys (user_id);

create table services (
    id          text primary key,
    name        text not null,
    description text not null default '',
    -- the integration (routing) key alert sources send events with
    routing_key text not null constraint services_routing_key_key unique,
    -- events per minute through this service's routing key; null means the default
    rate_limit  integer constraint services_rate_limit_check check (rate_limit > 0),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

create table incidents (
    id              text primary key,
    service_id      text not null references services (id),
    dedup_key       text not null,
    title           text not null,
    description     text,
    status          text not null constraint incidents_status_check
                        check (status in ('OPEN', 'ACKNOWLEDGED', 'RESOLVED', 'SNOOZED', 'SUPPRESSED')),
    urgency         text not null constraint incidents_urgency_check check (urgency in ('HIGH', 'MEDIUM', 'LOW')),
    priority        text constraint incidents_priority_check check (priority in ('P1', 'P2', 'P3', 'P4', 'P5')),
    assignee_id     text references users (id) on delete set null,
    alert_count     integer not null default 0,
    -- stream sequence of the event that opened the incident; null for incidents made by hand
    opened_seq      bigint,
    created_at      timestamptz not null,
    updated_at      timestamptz not null,
    acknowledged_at timestamptz,
    resolved_at     timestamptz,
    snoozed_until   timestamptz
);
create unique index incidents_one_open_per_key on incidents (service_id, dedup_key) where status <> 'RESOLVED';
create index incidents_key_seq_idx on incidents (service_id, dedup_key, opened_seq);
create index incidents_created_idx on incidents (created_at desc, id desc);
create index incidents_service_created_idx on incidents (service_id, created_at desc, id desc);
create index incidents_status_created_idx on incidents (status, created_at desc, id desc);

-- One row per (service, dedup key) that ever received an event: the row workers lock to apply
-- that key's events one at a time, and the highest stream sequence applied for it.
create table alert_keys (
    service_id text not null,
    dedup_key  text not null,
    last_seq   bigint not null,
    primary key (service_id, dedup_key)
);

-- Every accepted event, exactly once (event_id is the JetStream Nats-Msg-Id).
create table events (
    event_id    uuid primary key,
    seq         bigint not null,
    service_id  text not null,
    dedup_key   text not null,
    action      text not null constraint events_action_check check (action in ('trigger', 'acknowledge', 'resolve')),
    payload     jsonb,
    received_at timestamptz not null,
    applied_at  timestamptz not null default now(),
    -- what applying the event did: created, absorbed, acknowledged, resolved or ignored
    outcome     text not null constraint events_outcome_check
                    check (outcome in ('created', 'absorbed', 'acknowledged', 'resolved', 'ignored')),
    incident_id text
);
create index events_key_seq_idx on events (service_id, dedup_key, seq);
create index events_incident_idx on events (incident_id, seq desc);

-- Timeline entries made by people (notes, manual changes). Event entries come from `events`.
create table incident_timeline (
    id          bigserial primary key,
    incident_id text not null references incidents (id) on delete cascade,
    at          timestamptz not null default now(),
    kind        text not null,
    actor_id    text,
    message     text,
    data        jsonb
);
create index incident_timeline_incident_idx on incident_timeline (incident_id, at desc);
