-- The event log grows by every accepted event (over a billion rows a day at 15k events/s). It is
-- partitioned by the UTC day an event was accepted, so that old days are dropped whole after
-- EVENT_RETENTION_DAYS (a worker background role creates the coming days' partitions and drops
-- expired ones). The primary key includes the partition key; an event's `received_at` is fixed at
-- ingest and travels with it, so a redelivery still finds its row.
alter table events rename to events_unpartitioned;
alter index events_pkey rename to events_unpartitioned_pkey;
alter index events_key_seq_idx rename to events_unpartitioned_key_seq_idx;
alter index events_incident_idx rename to events_unpartitioned_incident_idx;

create table events (like events_unpartitioned including defaults including constraints)
    partition by range (received_at);
alter table events add constraint events_pkey primary key (event_id, received_at);
create index events_key_seq_idx on events (service_id, dedup_key, seq);
create index events_incident_idx on events (incident_id, seq desc);

-- Rows of a day that has no partition land here, and so do the events a still-open incident needs
-- for order repair when their day is dropped (see the retention role).
create table events_default partition of events default;

-- Creates the partition of one UTC day if it is missing; false when rows for that day already sit
-- in the default partition (they stay there, still correct, and the day is left unpartitioned).
create function events_ensure_day(day date) returns boolean language plpgsql as $$
declare
    name text := 'events_' || to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp at time zone 'UTC';
    high timestamptz := (day + 1)::timestamp at time zone 'UTC';
begin
    if to_regclass(name) is not null then
        return true;
    end if;
    if exists (select 1 from events_default where received_at >= low and received_at < high) then
        return false;
    end if;
    execute format('create table %I partition of events for values from (%L) to (%L)', name, low, high);
    return true;
end
$$;

select events_ensure_day(d::date)
from generate_series(coalesce((select min(received_at) at time zone 'UTC' from events_unpartitioned)::date,
                              (now() at time zone 'UTC')::date - 1),
                     (now() at time zone 'UTC')::date + 3, interval '1 day') as d;

insert into events select * from events_unpartitioned;
drop table events_unpartitioned;
