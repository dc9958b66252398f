-- Manual status changes are stored in the event log beside alert events (actor_id set), at the
-- key's current stream position, so re-applying a key's events in order keeps them.
alter table events drop constraint events_action_check;
alter table events add constraint events_action_check
    check (action in ('trigger', 'acknowledge', 'resolve', 'snooze', 'reopen'));
alter table events drop constraint events_outcome_check;
alter table events add constraint events_outcome_check
    check (outcome in ('created', 'absorbed', 'acknowledged', 'resolved', 'ignored', 'snoozed', 'reopened'));
-- who made a manual change (a user id, or 'system'); null for events from alert sources
alter table events add column actor_id text;

create index incidents_snoozed_idx on incidents (snoozed_until) where status = 'SNOOZED';
create index incidents_updated_idx on incidents (updated_at desc, id desc);
create index incidents_assignee_idx on incidents (assignee_id, created_at desc, id desc) where assignee_id is not null;

create table schedules (
    id         text primary key,
    name       text not null,
    time_zone  text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- Layers in order of precedence: a higher position wins where both have someone on call.
create table schedule_layers (
    id             text primary key,
    schedule_id    text not null references schedules (id) on delete cascade,
    position       integer not null,
    name           text not null,
    starts_at      timestamptz not null,
    ends_at        timestamptz,
    rotation       text not null constraint schedule_layers_rotation_check check (rotation in ('daily', 'weekly', 'hours')),
    rotation_hours integer constraint schedule_layers_hours_check check (rotation_hours > 0),
    -- local wall-clock hand-off time, HH:MM, in the schedule's zone
    handoff_time   text not null,
    created_at     timestamptz not null default now(),
    constraint schedule_layers_position_key unique (schedule_id, position)
);

create table schedule_layer_members (
    layer_id text not null references schedule_layers (id) on delete cascade,
    position integer not null,
    user_id  text not null references users (id),
    primary key (layer_id, position)
);

create table schedule_overrides (
    id          text primary key,
    schedule_id text not null references schedules (id) on delete cascade,
    user_id     text not null references users (id),
    starts_at   timestamptz not null,
    ends_at     timestamptz not null,
    created_at  timestamptz not null default now(),
    constraint schedule_overrides_interval_check check (ends_at > starts_at)
);
create index schedule_overrides_idx on schedule_overrides (schedule_id, starts_at);
