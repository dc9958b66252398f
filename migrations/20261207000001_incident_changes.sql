-- The change outbox (DESIGN §9). Every committed change to an incident is written here in the
-- transaction that makes it, with the incident's version after it (monotonic per incident); a
-- relay publishes the rows to the change stream in `seq` order, then deletes them. Changes of one
-- incident commit in order (they take the incident's key lock), so `seq` orders them.
alter table incidents add column version bigint not null default 0;

create table incident_changes (
    seq         bigint generated always as identity primary key,
    id          uuid not null,
    incident_id text not null,
    service_id  text not null,
    version     bigint not null,
    kind        text not null,
    at          timestamptz not null,
    actor       text not null,
    snapshot    jsonb not null
);
