-- Paging people (DESIGN §11, §12): escalation policies and the escalation each open incident
-- runs, users' contact methods and the notifications sent to them, maintenance windows and
-- heartbeats.

create table escalation_policies (
    id         text primary key,
    name       text not null,
    -- the current version: `PUT` writes a new one, running escalations keep theirs
    version    integer not null default 1,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- Every version a policy had: an escalation reads the version it started with.
create table escalation_policy_versions (
    policy_id  text not null references escalation_policies (id) on delete cascade,
    version    integer not null,
    -- how many times the steps start over after the last one
    repeat     integer not null constraint escalation_policy_versions_repeat_check check (repeat between 0 and 9),
    -- [{"escalateAfterMinutes": n, "targets": [{"type": "user"|"schedule", "id": …}]}]
    steps      jsonb not null,
    created_at timestamptz not null default now(),
    primary key (policy_id, version)
);

-- A policy in use by a service cannot be deleted (the foreign key refuses it: 409).
alter table services add column escalation_policy_id text
    constraint services_escalation_policy_id_fkey references escalation_policies (id);

-- The escalation an incident runs: started (ACTIVE, step 0 due now) when it becomes OPEN on a
-- service with a policy, stopped when it leaves OPEN, COMPLETED after the last step of the last
-- repeat. `escalation_step` is the next step to fire (0-based), `escalation_loop` the repeat it
-- is in, `escalation_firings` how many steps fired (each firing's notifications are keyed by it).
alter table incidents
    add column escalation_policy_id      text,
    add column escalation_policy_version integer,
    add column escalation_status         text constraint incidents_escalation_status_check
                                              check (escalation_status in ('ACTIVE', 'STOPPED', 'COMPLETED')),
    add column escalation_step           integer not null default 0,
    add column escalation_loop           integer not null default 0,
    add column escalation_firings        integer not null default 0,
    add column escalation_next_at        timestamptz;
create index incidents_escalation_due on incidents (escalation_next_at) where escalation_status = 'ACTIVE';

create table contact_methods (
    id         text primary key,
    user_id    text not null references users (id) on delete cascade,
    type       text not null constraint contact_methods_type_check check (type in ('email', 'webhook', 'slack')),
    address    text not null,
    created_at timestamptz not null default now(),
    constraint contact_methods_address_key unique (user_id, type, address)
);

-- One row per (incident, step firing, user, contact method): the unique key is what makes each
-- of them notified once, whatever the number of workers and crashes.
create table notifications (
    id                text primary key,
    incident_id       text not null references incidents (id) on delete cascade,
    firing            integer not null,
    user_id           text not null,
    contact_method_id text not null references contact_methods (id) on delete cascade,
    channel           text not null,
    address           text not null,
    -- `pending` (sent when due), `sent`, `failed`, or `cancelled` (the incident left OPEN first)
    status            text not null default 'pending'
                          constraint notifications_status_check check (status in ('pending', 'sent', 'failed', 'cancelled')),
    attempts          integer not null default 0,
    -- when the next attempt is due; a sender claims one by moving this past its timeout
    next_attempt_at   timestamptz not null default now(),
    last_error        text,
    created_at        timestamptz not null default now(),
    finished_at       timestamptz,
    constraint notifications_once unique (incident_id, firing, user_id, contact_method_id)
);
create index notifications_due on notifications (next_attempt_at) where status = 'pending';

create table maintenance_windows (
    id          text primary key,
    starts_at   timestamptz not null,
    ends_at     timestamptz not null,
    description text not null default '',
    -- set once the incidents it suppressed were opened, after its end
    ended_at    timestamptz,
    created_at  timestamptz not null default now(),
    constraint maintenance_windows_interval_check check (ends_at > starts_at)
);
create index maintenance_windows_ending on maintenance_windows (ends_at) where ended_at is null;

create table maintenance_window_services (
    window_id  text not null references maintenance_windows (id) on delete cascade,
    service_id text not null references services (id) on delete cascade,
    primary key (window_id, service_id)
);
create index maintenance_window_services_service on maintenance_window_services (service_id);

create table heartbeats (
    id               text primary key,
    service_id       text not null references services (id) on delete cascade,
    name             text not null,
    interval_seconds integer not null constraint heartbeats_interval_check check (interval_seconds between 5 and 604800),
    grace_seconds    integer not null constraint heartbeats_grace_check check (grace_seconds between 0 and 86400),
    -- SHA-256 of the ping URL's token; the token itself is never stored
    token_hash       bytea not null constraint heartbeats_token_hash_key unique,
    -- `up` (pinged in time, or new), `down` (missed: its incident was triggered)
    state            text not null default 'up' constraint heartbeats_state_check check (state in ('up', 'down')),
    last_ping_at     timestamptz,
    -- when it is missed if no ping comes first
    due_at           timestamptz not null,
    created_at       timestamptz not null default now()
);
create index heartbeats_due on heartbeats (due_at) where state = 'up';
