//! One way to page every listing: `limit` (1 to 200, default 50), `offset`, or `cursor` (the
//! previous page's `pagination.nextCursor`, a keyset position that stays right while rows are
//! added), and the `pagination` block every listing answers with.

use common::ApiError;
use common::fields::blank_as_none;
use common::incident::store::timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use utoipa::{IntoParams, ToSchema};

common::bounded_integer! {
    /// Page length.
    pub struct Limit(i64) { min: 1, max: 200, default: 50 }
}

common::bounded_integer! {
    /// Rows to skip (not with `cursor`).
    pub struct Offset(i64) { min: 0, max: i64::MAX, default: 0 }
}

/// The paging parameters of every listing.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page length, default 50.
    #[serde(default, deserialize_with = "blank_as_none")]
    pub limit: Option<Limit>,
    /// Rows to skip (not with cursor).
    #[serde(default, deserialize_with = "blank_as_none")]
    pub offset: Option<Offset>,
    /// `pagination.nextCursor` of the previous page.
    #[serde(default, deserialize_with = "blank_as_none")]
    pub cursor: Option<String>,
}

/// Where a listing's page starts and how long it is.
pub struct PageRequest<C> {
    pub limit: Limit,
    pub offset: Offset,
    /// The keyset position after which the page starts.
    pub cursor: Option<C>,
}

impl<C> PageRequest<C> {
    /// The first page, as long as a page can be.
    pub fn first_longest() -> Self {
        Self { limit: Limit(Limit::MAX), offset: Offset::default(), cursor: None }
    }
}

impl<C: Serialize + DeserializeOwned> PageRequest<C> {
    pub fn parse(query: PageQuery) -> Result<Self, ApiError> {
        let limit = query.limit.unwrap_or_default();
        let offset = query.offset.unwrap_or_default();
        let cursor = query
            .cursor
            .map(|v| {
                hex::decode(v)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| ApiError::validation("cursor", "is not a cursor from this listing"))
            })
            .transpose()?;
        if cursor.is_some() && offset.get() > 0 {
            return Err(ApiError::validation("offset", "cannot be combined with cursor"));
        }
        Ok(Self { limit, offset, cursor })
    }

    /// Rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit.get() + 1
    }

    /// Rows to skip.
    pub fn skip(&self) -> i64 {
        self.offset.get()
    }

    /// Cuts the fetched `rows` to the page and describes it; when more follow, `position` makes
    /// the next page's cursor from the page's last row.
    pub fn finish<R, E>(&self, rows: &mut Vec<R>, position: impl FnOnce(&R) -> Result<C, E>) -> Result<Pagination, E> {
        let has_more = rows.len() as i64 > self.limit.get();
        rows.truncate(self.limit.get() as usize);
        let next_cursor = match rows.last() {
            Some(last) if has_more => Some(hex::encode(serde_json::to_vec(&position(last)?).unwrap_or_default())),
            _ => None,
        };
        Ok(Pagination { limit: self.limit, offset: self.offset, has_more, next_cursor })
    }
}

/// Keyset position in a newest-first listing: the last row's creation time and id.
#[derive(Serialize, Deserialize)]
pub struct NewestFirst {
    c: String,
    id: String,
}

impl NewestFirst {
    /// The position of `row` (its `created_at` and `id`).
    pub fn of(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self { c: timestamp(row, "created_at")?.to_string(), id: row.try_get("id")? })
    }

    /// The creation time and id to bind where a listing continues.
    pub fn parts(&self) -> (String, String) {
        (self.c.clone(), self.id.clone())
    }
}

/// One page, newest first, of the rows `select` reads from `table` under the alias `t` (then
/// `group`, e.g. a `group by`), with the table's row count.
pub async fn newest_first(
    pool: &PgPool,
    page: &PageRequest<NewestFirst>,
    table: &str,
    select: &str,
    group: &str,
) -> Result<(Vec<PgRow>, i64, Pagination), ApiError> {
    newest_first_where(pool, page, table, select, group, "true", &[]).await
}

/// [`newest_first`] of the rows matching `filter`, a condition on `t` whose parameters `$1`, `$2`,
/// … are `params` in order (`None` binds null), with how many rows match it.
pub async fn newest_first_where(
    pool: &PgPool,
    page: &PageRequest<NewestFirst>,
    table: &str,
    select: &str,
    group: &str,
    filter: &str,
    params: &[Option<&str>],
) -> Result<(Vec<PgRow>, i64, Pagination), ApiError> {
    // The page's own parameters come after the filter's.
    let [created, id, limit, offset] = [1, 2, 3, 4].map(|k| params.len() + k);
    let sql = format!(
        "{select} where ({filter}) and (${created}::text is null or (t.created_at, t.id) < (${created}::timestamptz, ${id}))
         {group} order by t.created_at desc, t.id desc limit ${limit} offset ${offset}"
    );
    let (after_created, after_id) = page.cursor.as_ref().map(NewestFirst::parts).unzip();
    let mut rows = sqlx::query(&sql);
    let count_sql = format!("select count(*) from {table} t where {filter}");
    let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
    for param in params {
        rows = rows.bind(*param);
        count = count.bind(*param);
    }
    let mut rows = rows.bind(after_created).bind(after_id).bind(page.fetch()).bind(page.skip()).fetch_all(pool).await?;
    let total = count.fetch_one(pool).await?;
    let pagination = page.finish(&mut rows, NewestFirst::of)?;
    Ok((rows, total, pagination))
}

/// How a page sits in its listing.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    pub limit: Limit,
    pub offset: Offset,
    pub has_more: bool,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}
