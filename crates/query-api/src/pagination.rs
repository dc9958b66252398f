//! One way to page every listing: `limit` (1 to 200, default 50), `offset`, or `cursor` (the
//! previous page's `pagination.nextCursor`, a keyset position that stays right while rows are
//! added), and the `pagination` block every listing answers with.

use common::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::params::Params;

/// Where a listing's page starts and how long it is.
pub struct PageRequest<C> {
    pub limit: i64,
    pub offset: i64,
    /// The keyset position after which the page starts.
    pub cursor: Option<C>,
}

impl<C: Serialize + DeserializeOwned> PageRequest<C> {
    pub fn parse(params: &Params) -> Result<Self, ApiError> {
        let limit = params.integer("limit", 50, 1, 200)?;
        let offset = params.integer("offset", 0, 0, i64::MAX)?;
        let cursor = params
            .get(&["cursor"])
            .map(|(_, v)| {
                hex::decode(v)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| ApiError::validation("cursor", "is not a cursor from this listing"))
            })
            .transpose()?;
        if cursor.is_some() && offset > 0 {
            return Err(ApiError::validation("offset", "cannot be combined with cursor"));
        }
        Ok(Self { limit, offset, cursor })
    }

    /// Rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// Cuts the fetched `rows` to the page and describes it; when more follow, `position` makes
    /// the next page's cursor from the page's last row.
    pub fn finish<R, E>(&self, rows: &mut Vec<R>, position: impl FnOnce(&R) -> Result<C, E>) -> Result<Pagination, E> {
        let has_more = rows.len() as i64 > self.limit;
        rows.truncate(self.limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if has_more => Some(hex::encode(serde_json::to_vec(&position(last)?).unwrap_or_default())),
            _ => None,
        };
        Ok(Pagination { limit: self.limit, offset: self.offset, has_more, next_cursor })
    }
}

/// How a page sits in its listing.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    #[schema(minimum = 1, maximum = 200)]
    pub limit: i64,
    #[schema(minimum = 0)]
    pub offset: i64,
    pub has_more: bool,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}
