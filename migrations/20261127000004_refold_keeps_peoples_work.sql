-- A re-fold may merge an incident into the one that now holds its alerts: its timeline (notes,
-- manual changes) is moved to that incident, which the same transaction may create only later,
-- so the reference is checked at commit.
alter table incident_timeline drop constraint incident_timeline_incident_id_fkey;
alter table incident_timeline add constraint incident_timeline_incident_id_fkey
    foreign key (incident_id) references incidents (id) on delete cascade deferrable initially deferred;
