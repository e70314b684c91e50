//! Delivery accounting: the part of the tool that must never be wrong.
//!
//! Each member keeps a [`MemberCheck`] for its subscription to one room, for
//! the whole run (it survives reconnects, which is what makes the resume
//! check meaningful). It classifies every event it is handed:
//!
//! - a message number seen before is a **duplicate** (whatever its seq: a
//!   server that stores a retried send twice gives it a new seq);
//! - a new message whose seq is not above the last seq seen is delivered but
//!   **out of order**;
//! - a seq that jumps by more than one is a **seq gap** (the spec promises no
//!   holes, so even a gap whose events we do not track is a finding);
//! - **lost** is what the member should have received (counted by whoever
//!   sent) minus the distinct messages it did receive.
//!
//! [`SeqBook`] checks the room-wide order: every member, and the sender's
//! ack, must agree on which message holds which seq.

/// A growable bit set over message numbers.
#[derive(Debug, Default, Clone)]
pub struct BitSet(Vec<u64>);

impl BitSet {
    /// Set bit `i`; returns whether it was already set.
    pub fn test_and_set(&mut self, i: u64) -> bool {
        let w = (i / 64) as usize;
        if w >= self.0.len() {
            self.0.resize((w + 1).next_power_of_two(), 0);
        }
        let bit = 1u64 << (i % 64);
        let was = self.0[w] & bit != 0;
        self.0[w] |= bit;
        was
    }

    pub fn contains(&self, i: u64) -> bool {
        self.0.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// How one event was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A message of ours, first time, in order.
    New,
    /// A message of ours, first time, but its seq is not above the last one seen.
    OutOfOrder,
    /// A message of ours seen before.
    Duplicate,
    /// An event that is not one of our messages (a join, someone else's text).
    Other,
}

/// Counters of one member (or a sum of members).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Distinct messages of ours received (in order or not).
    pub delivered: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub seq_gaps: u64,
    /// Events of any kind with a seq at or below the last one seen.
    pub seq_regressions: u64,
    pub other_events: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.seq_gaps += o.seq_gaps;
        self.seq_regressions += o.seq_regressions;
        self.other_events += o.other_events;
    }

    /// `self - before`, for the counts of one phase of a longer run.
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            delivered: self.delivered - before.delivered,
            duplicates: self.duplicates - before.duplicates,
            out_of_order: self.out_of_order - before.out_of_order,
            seq_gaps: self.seq_gaps - before.seq_gaps,
            seq_regressions: self.seq_regressions - before.seq_regressions,
            other_events: self.other_events - before.other_events,
        }
    }
}

/// One member's subscription, checked event by event.
#[derive(Debug, Clone)]
pub struct MemberCheck {
    last_seq: u64,
    seen: BitSet,
    pub counts: Counts,
}

impl MemberCheck {
    /// Start after `caught_up` said the room was at `seq`.
    pub fn new(seq: u64) -> Self {
        Self { last_seq: seq, seen: BitSet::default(), counts: Counts::default() }
    }

    /// The last seq received, the cursor to resume from.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether message `key` (its index among the room's messages) was received.
    pub fn has(&self, key: u64) -> bool {
        self.seen.contains(key)
    }

    /// Classify an event with `seq`; `key` is its index among the room's
    /// messages when it is one of ours.
    pub fn on_event(&mut self, seq: u64, key: Option<u64>) -> Verdict {
        let in_order = seq > self.last_seq;
        if in_order {
            if seq != self.last_seq + 1 {
                self.counts.seq_gaps += 1;
            }
            self.last_seq = seq;
        } else {
            self.counts.seq_regressions += 1;
        }
        let Some(key) = key else {
            self.counts.other_events += 1;
            return Verdict::Other;
        };
        if self.seen.test_and_set(key) {
            self.counts.duplicates += 1;
            Verdict::Duplicate
        } else if in_order {
            self.counts.delivered += 1;
            Verdict::New
        } else {
            self.counts.delivered += 1;
            self.counts.out_of_order += 1;
            Verdict::OutOfOrder
        }
    }

    /// Messages expected but never received.
    pub fn lost(&self, expected: u64) -> u64 {
        expected.saturating_sub(self.counts.delivered)
    }
}

/// Room-wide agreement on which message sits at which seq.
#[derive(Debug, Default, Clone)]
pub struct SeqBook {
    base: u64,
    /// slot `seq - base - 1` holds message number + 1 (0: not yet known).
    slots: Vec<u64>,
    /// Seqs for which two observers named different messages.
    pub conflicts: u64,
}

impl SeqBook {
    /// Seqs above `base` are checked.
    pub fn new(base: u64) -> Self {
        Self { base, slots: Vec::new(), conflicts: 0 }
    }

    /// Record that `seq` holds message `msg`; false (and a conflict) when
    /// someone saw another message there.
    pub fn record(&mut self, seq: u64, msg: u64) -> bool {
        if seq <= self.base {
            return true;
        }
        let i = seq - self.base - 1;
        // A seq far beyond anything sent is itself wrong, but not worth a huge allocation.
        if i > 1 << 28 {
            self.conflicts += 1;
            return false;
        }
        let i = i as usize;
        if i >= self.slots.len() {
            self.slots.resize((i + 1).next_power_of_two(), 0);
        }
        match self.slots[i] {
            0 => {
                self.slots[i] = msg + 1;
                true
            }
            v if v == msg + 1 => true,
            _ => {
                self.conflicts += 1;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_stream_counts_only_deliveries() {
        let mut m = MemberCheck::new(10);
        for (i, seq) in (11..=20).enumerate() {
            assert_eq!(m.on_event(seq, Some(i as u64)), Verdict::New);
        }
        assert_eq!(m.counts, Counts { delivered: 10, ..Counts::default() });
        assert_eq!(m.lost(10), 0);
        assert_eq!(m.last_seq(), 20);
    }

    #[test]
    fn a_dropped_message_is_lost_and_leaves_a_seq_gap() {
        let mut m = MemberCheck::new(0);
        m.on_event(1, Some(0));
        m.on_event(3, Some(2)); // seq 2 (message 1) never comes
        assert_eq!(m.lost(3), 1);
        assert!(!m.has(1));
        assert_eq!(m.counts.seq_gaps, 1);
        assert_eq!(m.counts.duplicates, 0);
        assert_eq!(m.counts.out_of_order, 0);
    }

    #[test]
    fn a_repeated_message_is_a_duplicate_whatever_its_seq() {
        let mut m = MemberCheck::new(0);
        m.on_event(1, Some(0));
        m.on_event(2, Some(1));
        // Re-sent with the same seq (a replay overlapping live events)…
        assert_eq!(m.on_event(2, Some(1)), Verdict::Duplicate);
        // …or stored twice under a new seq (a broken idempotent retry).
        assert_eq!(m.on_event(3, Some(1)), Verdict::Duplicate);
        assert_eq!(m.counts.duplicates, 2);
        assert_eq!(m.counts.delivered, 2);
        assert_eq!(m.lost(2), 0);
    }

    #[test]
    fn a_swapped_pair_is_out_of_order_but_not_lost() {
        let mut m = MemberCheck::new(0);
        m.on_event(1, Some(0));
        m.on_event(3, Some(2));
        assert_eq!(m.on_event(2, Some(1)), Verdict::OutOfOrder);
        assert_eq!(m.counts.out_of_order, 1);
        assert_eq!(m.counts.delivered, 3);
        assert_eq!(m.lost(3), 0);
        // The jump 1 → 3 was a gap when it happened; the late arrival is a regression.
        assert_eq!(m.counts.seq_gaps, 1);
        assert_eq!(m.counts.seq_regressions, 1);
    }

    #[test]
    fn non_message_events_advance_the_cursor_without_counting() {
        let mut m = MemberCheck::new(0);
        assert_eq!(m.on_event(1, None), Verdict::Other);
        m.on_event(2, Some(0));
        assert_eq!(m.counts.other_events, 1);
        assert_eq!(m.counts.seq_gaps, 0);
        assert_eq!(m.last_seq(), 2);
    }

    #[test]
    fn phase_counts_subtract() {
        let mut m = MemberCheck::new(0);
        m.on_event(1, Some(0));
        let before = m.counts;
        m.on_event(2, Some(1));
        m.on_event(2, Some(1));
        assert_eq!(
            m.counts.since(&before),
            Counts { delivered: 1, duplicates: 1, seq_regressions: 1, ..Counts::default() }
        );
    }

    #[test]
    fn seq_book_catches_members_disagreeing() {
        let mut b = SeqBook::new(5);
        assert!(b.record(6, 100));
        assert!(b.record(6, 100));
        assert!(!b.record(6, 101));
        assert!(b.record(3, 7), "seqs at or below the base are not tracked");
        assert!(!b.record(u64::MAX, 1));
        assert_eq!(b.conflicts, 2);
    }

    #[test]
    fn bitset_grows_and_remembers() {
        let mut s = BitSet::default();
        assert!(!s.test_and_set(1000));
        assert!(s.test_and_set(1000));
        assert!(s.contains(1000));
        assert!(!s.contains(999));
        assert!(!s.contains(1 << 40));
    }
}
