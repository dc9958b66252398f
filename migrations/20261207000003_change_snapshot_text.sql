-- The outbox's snapshots are only ever copied into the change stream's messages, never queried:
-- stored as the JSON text they are published as, PostgreSQL neither parses them on insert nor
-- renders them on read, and the relay splices them into the message as they are.
alter table incident_changes alter column snapshot type text using snapshot::text;

-- When the change was written (its transaction's start): the relay reports how long each change
-- waited from there to the stream (`change_relay_lag_seconds`).
alter table incident_changes add column written_at timestamptz not null default now();
