-- Web console sessions (DESIGN §13): a signed-in browser holds a random token in an HttpOnly
-- cookie; only its SHA-256 is stored. A session ends at `expires_at`, on sign-out, or when
-- revoked (`opssentinal user sessions revoke`).
create table console_sessions (
    id           text primary key,
    user_id      text not null references users (id) on delete cascade,
    token_hash   bytea not null constraint console_sessions_token_hash_key unique,
    created_at   timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    expires_at   timestamptz not null,
    revoked_at   timestamptz,
    user_agent   text not null default ''
);
create index console_sessions_user on console_sessions (user_id);
