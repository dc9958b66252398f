-- Dashboards mostly list what is not resolved, newest first.
create index incidents_unresolved_created_idx on incidents (created_at desc, id desc) where status <> 'RESOLVED';
