-- Opening incidents in bulk (a worker applies hundreds of new keys in one statement) paid one
-- PL/pgSQL call and one delta row per incident. New incidents are now counted once per statement,
-- from its transition table, one delta row per (service, status, urgency). Updates (with their
-- WHEN clause, so absorbed alerts fire nothing) and deletes keep the row trigger.
drop trigger incidents_counted on incidents;

create function incident_counts_track_inserts() returns trigger language plpgsql as $$
begin
    insert into incident_count_deltas (service_id, status, urgency, n)
    select service_id, status, urgency, count(*) from inserted group by service_id, status, urgency;
    return null;
end
$$;

create trigger incidents_counted_inserts after insert on incidents
    referencing new table as inserted
    for each statement execute function incident_counts_track_inserts();
create trigger incidents_counted_deletes after delete on incidents
    for each row execute function incident_counts_track();
