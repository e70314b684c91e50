//! Read receipts: how far each user has read each room, as `(epoch, seq)`
//! of the room's log. One trait, two stores chosen at start-up like the
//! room log's: sled (`embedded.rs`) or Redis (`redis.rs`, shared by every
//! process). A mark only moves forward within an epoch; a mark of another
//! epoch (the log was started again) is replaced by any new one.

pub mod embedded;
pub mod redis;

use crate::storage::StorageError;
use crate::storage::events::BoxFuture;

/// How far a user has read a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMark {
    pub epoch: String,
    pub seq: u64,
}

impl ReadMark {
    /// Stored as `EPOCH SEQ` (an epoch holds no space).
    fn encode(&self) -> String {
        format!("{} {}", self.epoch, self.seq)
    }

    fn decode(s: &str) -> Result<Self, StorageError> {
        let corrupt = || StorageError::Corrupt { tree: "receipts", detail: format!("bad read mark {s:?}") };
        let (epoch, seq) = s.rsplit_once(' ').ok_or_else(corrupt)?;
        Ok(Self { epoch: epoch.to_owned(), seq: seq.parse().map_err(|_| corrupt())? })
    }

    /// Whether `self` replaces `old`: a later seq of the same epoch, or another epoch.
    fn advances(&self, old: &ReadMark) -> bool {
        self.epoch != old.epoch || self.seq > old.seq
    }
}

pub trait ReceiptStore: Send + Sync {
    /// The user's mark in the room, if any.
    fn get<'a>(&'a self, room_id: &'a str, user_id: &'a str) -> BoxFuture<'a, Result<Option<ReadMark>, StorageError>>;
    /// Stores `mark` unless the stored one is as far or further in the
    /// same epoch; answers whether it moved. Durable once answered.
    fn advance<'a>(
        &'a self,
        room_id: &'a str,
        user_id: &'a str,
        mark: &'a ReadMark,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_only_move_forward() {
        let m = ReadMark { epoch: "e1".into(), seq: 7 };
        assert_eq!(ReadMark::decode(&m.encode()).unwrap(), m);
        assert!(ReadMark::decode("nope").is_err());
        assert!(ReadMark { epoch: "e1".into(), seq: 8 }.advances(&m));
        assert!(!ReadMark { epoch: "e1".into(), seq: 7 }.advances(&m));
        assert!(!ReadMark { epoch: "e1".into(), seq: 3 }.advances(&m));
        assert!(ReadMark { epoch: "e2".into(), seq: 1 }.advances(&m));
    }
}
