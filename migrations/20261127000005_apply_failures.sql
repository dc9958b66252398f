-- Failed attempts to apply an event (not deliveries: a redelivery after a database outage or an
-- ack-wait expiry is no failure). An event is dead-lettered after WORKER_MAX_DELIVERIES of them;
-- rows older than a week are removed by the worker's retention role.
create table apply_failures (
    event_id   uuid primary key,
    attempts   integer not null,
    last_error text not null,
    updated_at timestamptz not null default now()
);
