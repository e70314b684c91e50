//! [`AdminStore`] in sled: tree `registration_tokens` (token → record) and
//! tree `denied_servers` (name → nothing). A use is taken with a
//! compare-and-swap loop on the token's record, so racing registrations
//! each see the count the other left.

use super::{AdminStore, RegToken, TakeUse};
use crate::storage::events::BoxFuture;
use crate::storage::{Db, StorageError, json_record, to_record};

const TOKENS: &str = "registration_tokens";

#[derive(Clone)]
pub struct EmbeddedAdmin {
    db: Db,
    tokens: sled::Tree,
    denied: sled::Tree,
}

impl EmbeddedAdmin {
    pub fn open(db: &Db) -> Result<Self, StorageError> {
        Ok(Self { db: db.clone(), tokens: db.tree(TOKENS)?, denied: db.tree("denied_servers")? })
    }

    /// Applies `change` to a token's record with compare-and-swap until it
    /// holds; `change` answers what it found and the record to store (None:
    /// leave it).
    fn update(
        &self,
        token: &str,
        change: impl Fn(Option<RegToken>) -> (TakeUse, Option<RegToken>),
    ) -> Result<(TakeUse, bool), StorageError> {
        loop {
            let old = self.tokens.get(token.as_bytes())?;
            let rec = old.as_ref().map(|v| json_record::<RegToken>(TOKENS, v)).transpose()?;
            let (found, new) = change(rec);
            let Some(new) = new else { return Ok((found, false)) };
            let swapped =
                self.db.gate().with(|| self.tokens.compare_and_swap(token.as_bytes(), old, Some(to_record(&new))))?;
            if swapped.is_ok() {
                return Ok((found, true));
            }
        }
    }
}

impl AdminStore for EmbeddedAdmin {
    fn add_token<'a>(&'a self, token: &'a RegToken) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            self.db.gate().with(|| self.tokens.insert(token.token.as_bytes(), to_record(token)))?;
            self.db.sync().await
        })
    }

    fn tokens(&self) -> BoxFuture<'_, Result<Vec<RegToken>, StorageError>> {
        Box::pin(async move { self.tokens.iter().values().map(|v| json_record(TOKENS, &v?)).collect() })
    }

    fn revoke_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let had = self.db.gate().with(|| self.tokens.remove(token.as_bytes()))?.is_some();
            self.db.sync().await?;
            Ok(had)
        })
    }

    fn take_use<'a>(&'a self, token: &'a str, now_ms: u64) -> BoxFuture<'a, Result<TakeUse, StorageError>> {
        Box::pin(async move {
            let (found, written) = self.update(token, |rec| match rec {
                None => (TakeUse::Unknown, None),
                Some(mut t) => match t.check(now_ms) {
                    TakeUse::Taken => {
                        t.completed += 1;
                        (TakeUse::Taken, Some(t))
                    }
                    other => (other, None),
                },
            })?;
            if written {
                self.db.sync().await?;
            }
            Ok(found)
        })
    }

    fn give_back<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let (_, written) = self.update(token, |rec| match rec {
                Some(mut t) if t.completed > 0 => {
                    t.completed -= 1;
                    (TakeUse::Taken, Some(t))
                }
                _ => (TakeUse::Unknown, None),
            })?;
            if written {
                self.db.sync().await?;
            }
            Ok(())
        })
    }

    fn set_denied<'a>(&'a self, server: &'a str, denied: bool) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let changed = self.db.gate().with(|| match denied {
                true => self.denied.insert(server.as_bytes(), &[][..]).map(|old| old.is_none()),
                false => self.denied.remove(server.as_bytes()).map(|old| old.is_some()),
            })?;
            self.db.sync().await?;
            Ok(changed)
        })
    }

    fn is_denied<'a>(&'a self, server: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move { Ok(self.denied.contains_key(server.as_bytes())?) })
    }

    fn denied(&self) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            self.denied
                .iter()
                .keys()
                .map(|k| {
                    let k = k?;
                    String::from_utf8(k.to_vec())
                        .map_err(|e| StorageError::Corrupt { tree: "denied_servers", detail: e.to_string() })
                })
                .collect()
        })
    }
}
