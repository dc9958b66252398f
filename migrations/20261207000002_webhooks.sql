-- Outbound webhooks (DESIGN §10). A webhook is a receiver's URL with the change types and
-- services it wants. Each change the receiver wants becomes one delivery row, made by the one
-- worker that follows the change stream (`webhook_fanout` holds how far it has read); any number
-- of workers send deliveries, claiming them with `for update skip locked`. Per (webhook,
-- incident) only the oldest unfinished delivery is sent, so each receiver sees an incident's
-- changes in order.
create table webhooks (
    id                   text primary key,
    url                  text not null,
    -- Change types wanted (`incident.acknowledged`, …); null: all.
    events               text[],
    -- Services whose incidents are wanted; null: all.
    service_ids          text[],
    description          text not null default '',
    enabled              boolean not null default true,
    -- Why the webhook was disabled, when the system disabled it.
    disabled_reason      text,
    -- The signing secret (`whsec_…`); the previous one keeps signing until `previous_until`.
    secret               text not null,
    previous_secret      text,
    previous_until       timestamptz,
    -- Since when every attempt has failed (null: the last attempt succeeded, or none was made).
    failing_since        timestamptz,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now()
);

create table webhook_deliveries (
    -- The `webhook-id` header: the same on every attempt.
    id              text primary key,
    webhook_id      text not null references webhooks (id) on delete cascade,
    -- The change delivered (null for a ping) and its position in the change stream.
    change_id       uuid,
    stream_seq      bigint not null,
    incident_id     text,
    type            text not null,
    body            text not null,
    -- `pending` (to be sent when due), `succeeded` or `failed`.
    status          text not null default 'pending',
    attempts        integer not null default 0,
    -- When the next attempt is due; a sender claims a delivery by moving this past its timeout.
    next_attempt_at timestamptz not null default now(),
    created_at      timestamptz not null default now(),
    finished_at     timestamptz,
    unique (webhook_id, change_id)
);
-- The sender's question: which unfinished deliveries are due, oldest per (webhook, incident)?
create index webhook_deliveries_pending on webhook_deliveries (webhook_id, incident_id, stream_seq)
    where status = 'pending';
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_deliveries_log on webhook_deliveries (webhook_id, created_at desc, id desc);

create table webhook_attempts (
    delivery_id text not null references webhook_deliveries (id) on delete cascade,
    n           integer not null,
    at          timestamptz not null,
    -- The receiver's HTTP status; null when no answer came (the error says why).
    http_status integer,
    latency_ms  integer not null,
    error       text,
    primary key (delivery_id, n)
);

-- How far the fan-out has read the change stream (one row).
create table webhook_fanout (
    one        boolean primary key default true check (one),
    stream_seq bigint not null
);
