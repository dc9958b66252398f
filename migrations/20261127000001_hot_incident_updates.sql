-- Absorbing an alert changes an incident's alert_count and updated_at. With updated_at in an
-- index, every such change was a non-HOT update that wrote a new entry into each of the
-- incidents table's ten indexes (and left as many dead ones): under live load that was most of
-- PostgreSQL's work per event. Without it, absorbs are HOT updates that touch no index.
-- `sort=updated_at` is served by a top-N sort over the filtered rows instead (see README).
drop index incidents_updated_idx;

-- Leave room on each page for the new row versions of HOT updates.
alter table incidents set (fillfactor = 80);
alter table alert_keys set (fillfactor = 80);

-- Workers lock a key, read its last applied sequence and raise it in one upsert; the value before
-- is kept here for the statement to return.
alter table alert_keys add column prev_seq bigint not null default 0;
