-- A service's derived status (DESIGN §6: CRITICAL with an open HIGH incident, DEGRADED with any
-- other open incident, else OPERATIONAL) is published as a change (`service.status_changed`,
-- DESIGN §9) in the transaction that changes it. Every change of open counts inserts
-- incident_count_deltas rows; a row trigger notes their services in a transaction-local
-- setting, and a deferred trigger, at commit, takes each noted service's row lock in id order
-- (`for no key update`: it does not conflict with the key-share locks foreign keys take),
-- recomputes the status from the counts and deltas it now sees and, when it differs, records
-- it and writes the outbox row. The lock orders the recomputations of one service, so the last
-- committed status is the true one. A transaction that changes no counts (alerts absorbed)
-- takes no lock.
alter table services
    add column status         text   not null default 'OPERATIONAL',
    add column status_version bigint not null default 0;
update services s set status = case
    when exists (select 1 from incidents i where i.service_id = s.id and i.status <> 'RESOLVED' and i.urgency = 'HIGH')
        then 'CRITICAL'
    when exists (select 1 from incidents i where i.service_id = s.id and i.status <> 'RESOLVED') then 'DEGRADED'
    else 'OPERATIONAL' end;

-- A service's change names no incident.
alter table incident_changes alter column incident_id drop not null;

create function service_status_note() returns trigger language plpgsql as $$
begin
    perform set_config('opssentinal.status_services',
        coalesce(current_setting('opssentinal.status_services', true), '') || ' ' || new.service_id, true);
    return null;
end
$$;

create function service_status_publish() returns trigger language plpgsql as $$
declare
    noted text := coalesce(current_setting('opssentinal.status_services', true), '');
    svc text;
    high bigint;
    open bigint;
    now_status text;
    was text;
    v bigint;
begin
    if noted = '' then
        return null;
    end if;
    perform set_config('opssentinal.status_services', '', true);
    for svc in select distinct s from unnest(string_to_array(trim(noted), ' ')) as s where s <> '' order by 1 loop
        select status into was from services where id = svc for no key update;
        if not found then
            continue;
        end if;
        select coalesce(sum(n) filter (where urgency = 'HIGH'), 0), coalesce(sum(n), 0) into high, open
        from (select urgency, n from incident_counts where service_id = svc and status <> 'RESOLVED'
              union all
              select urgency, n from incident_count_deltas where service_id = svc and status <> 'RESOLVED') c;
        now_status := case when high > 0 then 'CRITICAL' when open > 0 then 'DEGRADED' else 'OPERATIONAL' end;
        if now_status <> was then
            update services set status = now_status, status_version = status_version + 1 where id = svc
                returning status_version into v;
            insert into incident_changes (id, incident_id, service_id, version, kind, at, actor, snapshot)
            select gen_random_uuid(), null, s.id, v, 'service.status_changed', now(), 'system',
                   jsonb_build_object('id', s.id, 'name', s.name, 'status', now_status, 'previousStatus', was)::text
            from services s where s.id = svc;
        end if;
    end loop;
    return null;
end
$$;

create trigger service_status_noted after insert on incident_count_deltas
    for each row execute function service_status_note();
create constraint trigger service_status_published after insert on incident_count_deltas
    deferrable initially deferred
    for each row execute function service_status_publish();
