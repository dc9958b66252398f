-- The authority for retried events (DESIGN §1.2: dedup never depends on a cache). An event whose id
-- is derived from what makes it the same event (an Events API Idempotency-Key, an Alertmanager
-- alert's content: a UUIDv8) is claimed here when applied; a copy accepted again later, with
-- another receive time, finds the claim and changes nothing. Kept as long as the event log
-- (EVENT_RETENTION_DAYS), the documented horizon for retries.
create table idempotent_events (
    event_id uuid primary key,
    received_at timestamptz not null
);
create index idempotent_events_received_idx on idempotent_events (received_at);
