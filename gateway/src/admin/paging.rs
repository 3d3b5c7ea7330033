//! `?limit=&after=&q=` on the admin API's lists (docs/registry.md
//! "Paging"): items in a stable order (by id), those after the id `after`,
//! whose text contains `q` (case-insensitive), at most `limit` of them; the
//! answer's `next` is the `after` of the next page, absent on the last.
//! Without `limit` a list is whole, as before.
//!
//! [`Page::select`] picks the page from cheap keys (id and search text)
//! before the caller builds anything expensive for the items it keeps: a
//! target's full status is built for the 100 rows of a page, not for all
//! 10,000 targets.

use serde::Deserialize;

/// The paging parameters of a list request.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Page {
    /// At most this many items (`None`: all).
    pub limit: Option<usize>,
    /// Only items whose id sorts after this one.
    pub after: Option<String>,
    /// Only items whose id or text contains this (case-insensitive).
    pub q: Option<String>,
}

impl Page {
    /// Picks this page of `items`: sorted by `id`, after `after`, matching
    /// `q` in `text`, at most `limit`; with the `next` cursor when more
    /// match.
    pub fn select<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        id: impl Fn(&T) -> String,
        text: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let q = self
            .q
            .as_deref()
            .map(str::to_lowercase)
            .filter(|q| !q.is_empty());
        let mut keyed: Vec<(String, T)> = items
            .into_iter()
            .map(|t| (id(&t), t))
            .filter(|(k, _)| self.after.as_deref().is_none_or(|a| k.as_str() > a))
            .filter(|(k, t)| {
                q.as_deref().is_none_or(|q| {
                    k.to_lowercase().contains(q) || text(t).to_lowercase().contains(q)
                })
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let next = match self.limit {
            Some(limit) if keyed.len() > limit => {
                keyed.truncate(limit);
                keyed.last().map(|(k, _)| k.clone())
            }
            _ => None,
        };
        (keyed.into_iter().map(|(_, t)| t).collect(), next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(limit: Option<usize>, after: Option<&str>, q: Option<&str>) -> Page {
        Page {
            limit,
            after: after.map(str::to_owned),
            q: q.map(str::to_owned),
        }
    }

    #[test]
    fn pages_walk_every_item_once_in_id_order() {
        let items: Vec<(String, String)> = (0..25)
            .rev()
            .map(|i| (format!("d{i:02}"), format!("name {i}")))
            .collect();
        let select = |p: &Page| p.select(items.clone(), |t| t.0.clone(), |t| t.1.clone());
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (got, next) = select(&page(Some(10), after.as_deref(), None));
            seen.extend(got.into_iter().map(|t| t.0));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let want: Vec<String> = (0..25).map(|i| format!("d{i:02}")).collect();
        assert_eq!(seen, want);
        // Without a limit: everything, no cursor.
        let (all, next) = select(&page(None, None, None));
        assert_eq!((all.len(), next), (25, None));
        // A filter on the text, case-insensitive, then paged.
        let (got, next) = select(&page(Some(1), None, Some("NAME 1")));
        assert_eq!(got[0].0, "d01");
        assert_eq!(next.as_deref(), Some("d01"));
        let (got, _) = select(&page(Some(100), Some("d01"), Some("name 1")));
        let ids: Vec<&str> = got.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(
            ids,
            ["d10", "d11", "d12", "d13", "d14", "d15", "d16", "d17", "d18", "d19"]
        );
        // An exact last page has no cursor.
        let (got, next) = select(&page(Some(25), None, None));
        assert_eq!((got.len(), next), (25, None));
    }
}
