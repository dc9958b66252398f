-- Exact incident totals without counting rows: per (service, status, urgency) counts, kept by a
-- trigger that only appends +1/-1 deltas (so concurrent writers never wait on a counter row),
-- folded into the counts by a background task. counts + deltas is exact in any snapshot.
create table incident_counts (
    service_id text not null,
    status     text not null,
    urgency    text not null,
    n          bigint not null,
    primary key (service_id, status, urgency)
);

create table incident_count_deltas (
    id         bigserial primary key,
    service_id text not null,
    status     text not null,
    urgency    text not null,
    n          integer not null
);

create function incident_counts_track() returns trigger language plpgsql as $$
begin
    if tg_op in ('UPDATE', 'DELETE') then
        insert into incident_count_deltas (service_id, status, urgency, n) values (old.service_id, old.status, old.urgency, -1);
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into incident_count_deltas (service_id, status, urgency, n) values (new.service_id, new.status, new.urgency, 1);
    end if;
    return null;
end
$$;

create trigger incidents_counted after insert or delete on incidents
    for each row execute function incident_counts_track();
create trigger incidents_recounted after update of status, urgency, service_id on incidents
    for each row when (old.status is distinct from new.status or old.urgency is distinct from new.urgency
                       or old.service_id is distinct from new.service_id)
    execute function incident_counts_track();

insert into incident_counts (service_id, status, urgency, n)
select service_id, status, urgency, count(*) from incidents group by service_id, status, urgency;

-- The deltas table churns by design (rows live about a second): vacuum it early and often so
-- reading it never scans dead rows.
alter table incident_count_deltas set (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
                                       autovacuum_vacuum_cost_delay = 0);
