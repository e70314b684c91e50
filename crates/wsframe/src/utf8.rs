//! UTF-8 checked piece by piece, for text that arrives in fragments and
//! TCP segments: a byte that can never start or continue a valid sequence
//! fails at once, while a character cut between two pieces waits for the
//! next one.

/// Incremental UTF-8 validation.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The start of a character cut off at the end of the last piece.
    carry: [u8; 4],
    carry_len: u8,
}

/// The text is not UTF-8, whatever comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// How many bytes a character with this (valid) first byte has.
fn width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    /// Checks the next piece.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Invalid> {
        if self.carry_len > 0 {
            let have = self.carry_len as usize;
            let take = (width(self.carry[0]) - have).min(data.len());
            self.carry[have..have + take].copy_from_slice(&data[..take]);
            match std::str::from_utf8(&self.carry[..have + take]) {
                Ok(_) => self.carry_len = 0,
                // Still cut: `take` was all of `data`.
                Err(e) if e.error_len().is_none() => {
                    self.carry_len = (have + take) as u8;
                    return Ok(());
                }
                Err(_) => return Err(Invalid),
            }
            data = &data[take..];
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Invalid),
            Err(e) => {
                let rest = &data[e.valid_up_to()..];
                self.carry[..rest.len()].copy_from_slice(rest);
                self.carry_len = rest.len() as u8;
                Ok(())
            }
        }
    }

    /// Whether everything fed so far ends at a character boundary (the
    /// text is valid if it ends here).
    pub fn is_complete(&self) -> bool {
        self.carry_len == 0
    }

    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pieces(data: &[u8], cuts: &[usize]) -> Result<bool, Invalid> {
        let mut v = Utf8Validator::default();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts.into_iter().chain([data.len()]) {
            v.feed(&data[at..c])?;
            at = c;
        }
        Ok(v.is_complete())
    }

    #[test]
    fn fails_fast_and_waits_for_cut_characters() {
        let mut v = Utf8Validator::default();
        v.feed("κόσμ".as_bytes()).unwrap();
        v.feed(&[0xce]).unwrap();
        assert!(!v.is_complete());
        v.feed(&[0xb5]).unwrap();
        assert!(v.is_complete());
        // 0xF4 0x90: past U+10FFFF, known bad before the rest arrives.
        assert_eq!(v.feed(&[0xf4]), Ok(()));
        assert_eq!(v.feed(&[0x90]), Err(Invalid));
        assert_eq!(Utf8Validator::default().feed(&[b'a', 0xff]), Err(Invalid));
        assert_eq!(Utf8Validator::default().feed(&[0xed, 0xa0, 0x80]), Err(Invalid), "a surrogate");
    }

    fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
        // Mostly real text, with bytes that break it sprinkled in.
        let text = any::<String>().prop_map(String::into_bytes);
        (text, proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3)).prop_map(|(mut t, noise)| {
            for (at, b) in noise {
                let at = at % (t.len() + 1);
                t.insert(at, b);
            }
            t
        })
    }

    proptest! {
        #[test]
        fn any_split_agrees_with_std(data in utf8ish(), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
            let whole = std::str::from_utf8(&data).is_ok();
            let split = pieces(&data, &cuts);
            prop_assert_eq!(split == Ok(true), whole);
            // Fail-fast: a validator that says Invalid is right to.
            if split.is_err() { prop_assert!(!whole); }
        }
    }
}
