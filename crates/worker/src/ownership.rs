//! Who applies which partition, held in PostgreSQL advisory locks on one dedicated connection
//! per worker process (no membership protocol of our own):
//!
//! - **Membership**: a worker holds one *member* lock, on the lowest free slot. The members are
//!   the sessions holding member locks, read from `pg_locks`, so every worker sees the same list.
//! - **Assignment**: with `n` members sorted by slot, the member of rank `r` should own the
//!   `r`-th of `n` contiguous, even ranges of partitions (see `share`).
//! - **Ownership**: a worker applies a partition only while it holds that partition's lock. It
//!   takes the locks of its share that are free, and gives up (after draining) those it holds but
//!   no longer should.
//!
//! PostgreSQL releases a session's locks the moment its connection ends, so a worker that exits or
//! is killed frees its partitions at once, and a worker that loses its connection stops applying
//! (its locks are gone). How a partition changes hands without reordering: see `partitions`.

use std::ops::Range;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// Most member slots (so, most worker processes sharing one stream and consumer).
const MAX_SLOTS: i64 = 4096;

/// How long one lock statement may take before the connection is considered lost.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// This process's advisory locks.
pub struct Leases {
    options: PgConnectOptions,
    connection: Option<PgConnection>,
    /// First key of the member locks (the second is the slot).
    member_space: i32,
    /// First key of the partition locks (the second is the partition).
    partition_space: i32,
    slot: Option<i64>,
}

/// The members as this process last saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// This process's position among the members, sorted by slot.
    pub rank: usize,
    pub members: usize,
}

impl Leases {
    /// Lock spaces are derived from `name` (the stream and consumer), so deployments sharing a
    /// database never contend.
    pub fn new(options: PgConnectOptions, name: &str) -> Self {
        let (member_space, partition_space) = lock_spaces(name);
        Self { options, connection: None, member_space, partition_space, slot: None }
    }

    /// Connects if needed, takes a member slot if this process has none, and reads the members.
    /// An error means the connection (and with it every lock) is gone.
    pub async fn view(&mut self) -> Result<View, sqlx::Error> {
        let result = self.try_view().await;
        if result.is_err() {
            self.lost();
        }
        result
    }

    async fn try_view(&mut self) -> Result<View, sqlx::Error> {
        if self.connection.is_none() {
            self.connection = Some(timed(PgConnection::connect_with(&self.options)).await?);
            self.slot = None;
        }
        let (member_space, connection) = (self.member_space, self.connection.as_mut().expect("connected"));
        let mut slots = timed(held(connection, member_space)).await?;
        if self.slot.is_none() {
            let taken = take_slot(connection, member_space, &slots).await?;
            self.slot = Some(taken);
            slots = timed(held(connection, member_space)).await?;
        }
        let slot = self.slot.expect("slot taken");
        let rank = slots
            .iter()
            .position(|&s| s == slot)
            .ok_or_else(|| sqlx::Error::Protocol("this worker's member lock is not in pg_locks".to_owned()))?;
        Ok(View { rank, members: slots.len() })
    }

    /// Tries to take a partition's lock; `false` if another worker holds it.
    pub async fn try_take(&mut self, partition: u32) -> Result<bool, sqlx::Error> {
        let space = self.partition_space;
        let result = match self.connection.as_mut() {
            Some(connection) => timed(try_lock(connection, space, i64::from(partition))).await,
            None => Ok(false),
        };
        if result.is_err() {
            self.lost();
        }
        result
    }

    /// Gives a partition's lock back.
    pub async fn give_back(&mut self, partition: u32) -> Result<(), sqlx::Error> {
        let space = self.partition_space;
        let Some(connection) = self.connection.as_mut() else { return Ok(()) };
        let result = timed(
            sqlx::query("select pg_advisory_unlock($1, $2)")
                .bind(space)
                .bind(i32::try_from(partition).unwrap_or(i32::MAX))
                .execute(connection),
        )
        .await
        .map(drop);
        if result.is_err() {
            self.lost();
        }
        result
    }

    /// Whether the lock connection is up (and so the locks this process took are held).
    pub fn connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Forgets the connection: PostgreSQL frees every lock it held.
    pub fn lost(&mut self) {
        self.connection = None;
        self.slot = None;
    }

    /// Closes the connection, freeing every lock at once.
    pub async fn close(&mut self) {
        if let Some(connection) = self.connection.take() {
            let _closed = connection.close().await;
        }
        self.slot = None;
    }
}

/// The partitions the member of `rank` among `members` should own: the `rank`-th of `members`
/// contiguous ranges, whose sizes differ by one at most.
pub fn share(partitions: u32, view: View) -> Range<u32> {
    let members = view.members.max(1) as u64;
    let bound = |rank: u64| u32::try_from(rank.min(members) * u64::from(partitions) / members).unwrap_or(partitions);
    bound(view.rank as u64)..bound(view.rank as u64 + 1)
}

/// The name a stream's workers derive their lock spaces from.
pub fn lock_name(stream: &str, consumer: &str) -> String {
    format!("{stream}/{consumer}")
}

/// The first keys of the member and of the partition locks for `name`, as `pg_locks.classid`
/// shows them (the second key, `objid`, is the slot or the partition).
pub fn lock_spaces(name: &str) -> (i32, i32) {
    (lock_space(name, "members"), lock_space(name, "partitions"))
}

fn lock_space(name: &str, kind: &str) -> i32 {
    let digest = Sha256::new().chain_update(name).chain_update([0]).chain_update(kind).finalize();
    // Non-negative, so it reads back from pg_locks.classid (an oid) unchanged.
    i32::from_be_bytes([digest[0] & 0x7f, digest[1], digest[2], digest[3]])
}

async fn timed<T>(query: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
    tokio::time::timeout(STATEMENT_TIMEOUT, query).await.unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// The member slots held in this database, sorted.
async fn held(connection: &mut PgConnection, space: i32) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "select objid::int8 from pg_locks
         where locktype = 'advisory' and granted and objsubid = 2
           and database = (select oid from pg_database where datname = current_database())
           and classid = $1::int8::oid
         order by objid",
    )
    .bind(i64::from(space))
    .fetch_all(connection)
    .await
}

async fn try_lock(connection: &mut PgConnection, space: i32, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select pg_try_advisory_lock($1, $2)")
        .bind(space)
        .bind(i32::try_from(key).unwrap_or(i32::MAX))
        .fetch_one(connection)
        .await
}

/// Takes the lowest free member slot.
async fn take_slot(connection: &mut PgConnection, space: i32, held: &[i64]) -> Result<i64, sqlx::Error> {
    for slot in (0..MAX_SLOTS).filter(|s| !held.contains(s)) {
        if timed(try_lock(connection, space, slot)).await? {
            return Ok(slot);
        }
    }
    Err(sqlx::Error::Protocol(format!("all {MAX_SLOTS} worker member slots are taken")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_partition_once_and_differ_by_one_at_most() {
        for partitions in [1, 7, 12, 32, 100, 1024] {
            for members in 1..=40 {
                let shares: Vec<Range<u32>> =
                    (0..members).map(|rank| share(partitions, View { rank, members })).collect();
                let all: Vec<u32> = shares.iter().cloned().flatten().collect();
                assert_eq!(all, (0..partitions).collect::<Vec<_>>(), "{members} members of {partitions}");
                let (min, max) = (shares.iter().map(|s| s.len()).min(), shares.iter().map(|s| s.len()).max());
                assert!(max.unwrap() - min.unwrap() <= 1, "uneven shares: {members} of {partitions}");
            }
        }
        let thirds: Vec<Range<u32>> = (0..3).map(|rank| share(12, View { rank, members: 3 })).collect();
        assert_eq!(thirds, [0..4, 4..8, 8..12]);
    }

    #[test]
    fn lock_spaces_differ_by_name_and_kind_and_are_non_negative() {
        let spaces = [lock_space("A/w", "members"), lock_space("A/w", "partitions"), lock_space("B/w", "members")];
        assert!(spaces.iter().all(|&s| s >= 0));
        assert_ne!(spaces[0], spaces[1]);
        assert_ne!(spaces[0], spaces[2]);
    }
}
