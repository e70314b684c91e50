//! Password rules with Django's default validators as the model: minimum
//! length, similarity to the username, the common-password list (shipped
//! with the server, Django's own, BSD-licensed) and all-digits. Each refusal
//! has its own errcode.
//!
//! "Entirely numeric" means made only of decimal digits of any script
//! (Unicode general category Nd: `0`-`9`, full-width `０`-`９`, Arabic-Indic
//! `٠`-`٩`, …), which is what Python's `str.isdecimal` tests: a PIN typed on
//! an Arabic or Japanese keyboard is still a PIN. Other numeric characters
//! (fractions, Roman numerals, superscripts, circled digits) are not digits.

use std::collections::HashSet;
use std::io::Read;

use crate::protocol::ErrCode;
use crate::protocol::limits::{PASSWORD_MAX_BYTES, PASSWORD_MIN};

const COMMON_GZ: &[u8] = include_bytes!("../../assets/common-passwords.txt.gz");
const MAX_SIMILARITY: f64 = 0.7;

/// The password policy, with the common list loaded once at start-up.
pub struct PasswordPolicy {
    common: HashSet<String>,
}

impl PasswordPolicy {
    pub fn new() -> Self {
        let mut text = String::new();
        flate2::read::GzDecoder::new(COMMON_GZ).read_to_string(&mut text).expect("the bundled list is valid gzip text");
        Self { common: text.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect() }
    }

    pub fn common_len(&self) -> usize {
        self.common.len()
    }

    /// The first rule the password breaks, as `(errcode, message)`.
    pub fn check(&self, username: &str, password: &str) -> Result<(), (ErrCode, String)> {
        if password.chars().count() < PASSWORD_MIN {
            return Err((
                ErrCode::PasswordTooShort,
                format!("the password must have at least {PASSWORD_MIN} characters"),
            ));
        }
        if password.len() > PASSWORD_MAX_BYTES {
            return Err((ErrCode::PasswordTooLong, format!("the password must be at most {PASSWORD_MAX_BYTES} bytes")));
        }
        if too_similar(password, username) {
            return Err((ErrCode::PasswordTooSimilar, "the password is too similar to the username".into()));
        }
        if self.common.contains(password.trim().to_lowercase().as_str()) {
            return Err((ErrCode::PasswordTooCommon, "this password is too common".into()));
        }
        if password.chars().all(is_decimal_digit) {
            return Err((ErrCode::PasswordEntirelyNumeric, "the password is entirely numeric".into()));
        }
        Ok(())
    }
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self::new()
    }
}

/// A decimal digit of any script (general category Nd).
pub fn is_decimal_digit(c: char) -> bool {
    use unicode_general_category::{GeneralCategory, get_general_category};
    get_general_category(c) == GeneralCategory::DecimalNumber
}

/// Django's `UserAttributeSimilarityValidator` for the username attribute:
/// the username and its parts split at non-word characters, compared with
/// `SequenceMatcher.quick_ratio`.
fn too_similar(password: &str, username: &str) -> bool {
    let password = password.to_lowercase();
    let value = username.to_lowercase();
    let mut parts: Vec<&str> =
        value.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|p| !p.is_empty()).collect();
    parts.push(&value);
    parts
        .into_iter()
        .any(|part| !exceeds_maximum_length_ratio(&password, part) && quick_ratio(&password, part) >= MAX_SIMILARITY)
}

fn exceeds_maximum_length_ratio(password: &str, value: &str) -> bool {
    let pwd_len = password.chars().count() as f64;
    let value_len = value.chars().count() as f64;
    pwd_len >= 10.0 * value_len && value_len < MAX_SIMILARITY / 2.0 * pwd_len
}

/// 2·M / T where M counts the characters the strings share, with multiplicity.
fn quick_ratio(a: &str, b: &str) -> f64 {
    let total = a.chars().count() + b.chars().count();
    if total == 0 {
        return 1.0;
    }
    let mut avail = std::collections::HashMap::<char, usize>::new();
    for c in b.chars() {
        *avail.entry(c).or_default() += 1;
    }
    let mut matches = 0usize;
    for c in a.chars() {
        if let Some(n) = avail.get_mut(&c).filter(|n| **n > 0) {
            *n -= 1;
            matches += 1;
        }
    }
    2.0 * matches as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn django_rules_each_with_their_code() {
        let p = PasswordPolicy::new();
        assert!(p.common_len() > 19_000, "ships Django's list");
        let code = |u: &str, pw: &str| p.check(u, pw).err().map(|e| e.0);
        assert_eq!(code("ann", "short1!"), Some(ErrCode::PasswordTooShort));
        assert_eq!(code("ann", &"x".repeat(1025)), Some(ErrCode::PasswordTooLong));
        assert_eq!(code("ann", "password"), Some(ErrCode::PasswordTooCommon));
        assert_eq!(code("ann", "PassWord"), Some(ErrCode::PasswordTooCommon));
        assert_eq!(code("ann", "90210384756"), Some(ErrCode::PasswordEntirelyNumeric));
        assert_eq!(code("margaret", "margaret1"), Some(ErrCode::PasswordTooSimilar));
        assert_eq!(code("jo.smith", "smith123"), Some(ErrCode::PasswordTooSimilar));
        assert_eq!(code("ann", "correct horse battery staple"), None);
        assert_eq!(code("ann", "zebra-quartz-71"), None);
    }

    #[test]
    fn numeric_means_decimal_digits_of_any_script() {
        let p = PasswordPolicy::new();
        let code = |pw: &str| p.check("ann", pw).err().map(|e| e.0);
        for digits in [
            "83920571946",
            "\u{ff18}\u{ff13}\u{ff19}\u{ff12}\u{ff10}\u{ff15}\u{ff17}\u{ff11}",
            "\u{663}\u{664}\u{665}\u{666}\u{667}\u{668}\u{669}\u{660}",
            "12\u{663}4\u{ff15}6789",
        ] {
            assert_eq!(code(digits), Some(ErrCode::PasswordEntirelyNumeric), "{digits}");
        }
        // Numeric but not decimal digits: fractions (No), Roman numerals (Nl), superscripts and circled digits (No).
        for other in [
            "\u{bd}\u{bd}\u{bd}\u{bd}\u{bd}\u{bd}\u{bd}\u{bd}",
            "\u{216b}\u{216b}\u{216b}\u{216b}\u{216b}\u{216b}\u{216b}\u{216b}",
            "\u{b2}\u{b3}\u{b9}\u{b2}\u{b3}\u{b9}\u{b2}\u{b3}",
            "\u{2460}\u{2461}\u{2462}\u{2463}\u{2464}\u{2465}\u{2466}\u{2467}",
        ] {
            assert_eq!(code(other), None, "{other}");
        }
        assert!(
            is_decimal_digit('7')
                && is_decimal_digit('\u{ff17}')
                && !is_decimal_digit('\u{bd}')
                && !is_decimal_digit('a')
        );
    }

    #[test]
    fn quick_ratio_matches_python() {
        // difflib.SequenceMatcher(a="abcd", b="bcde").quick_ratio() == 0.75
        assert!((quick_ratio("abcd", "bcde") - 0.75).abs() < 1e-9);
        assert!((quick_ratio("aab", "abb") - 2.0 * 2.0 / 6.0).abs() < 1e-9);
    }
}
