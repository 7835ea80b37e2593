//! Passwords for the Windows `ssm-user` account (protocol.md §7.2): a fresh one for every
//! session, never stored, the account disabled again when the session ends. Pure (the
//! random source is a parameter) and platform-neutral, so it is tested on every build.
//!
//! Rules, as upstream: length drawn from 30..63, characters from `a-z A-Z 0-9 ! # %`, at
//! least one lower-case letter, upper-case letter, digit and symbol (Windows' default
//! complexity policy wants three of the four classes).

use rand::seq::SliceRandom;
use rand::Rng;

const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &[u8] = b"0123456789";
const SYMBOLS: &[u8] = b"!#%";
/// Shortest password (inclusive).
pub const MIN_LEN: usize = 30;
/// Longest password (exclusive).
pub const MAX_LEN: usize = 63;

/// A new password from `rng` (use a cryptographic generator: `rand::rngs::OsRng` or
/// `rand::thread_rng()`).
pub fn generate(rng: &mut impl Rng) -> String {
    let len = rng.gen_range(MIN_LEN..MAX_LEN);
    let classes = [LOWER, UPPER, DIGITS, SYMBOLS];
    let all: Vec<u8> = classes.concat();
    let mut chars: Vec<u8> = classes
        .iter()
        .filter_map(|class| class.choose(rng).copied())
        .collect();
    while chars.len() < len {
        if let Some(&c) = all.choose(rng) {
            chars.push(c);
        }
    }
    chars.shuffle(rng);
    chars.into_iter().map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_follow_the_rules_and_differ() {
        let mut rng = rand::thread_rng();
        let mut seen = std::collections::HashSet::new();
        let mut lengths = std::collections::HashSet::new();
        for _ in 0..2000 {
            let p = generate(&mut rng);
            assert!((MIN_LEN..MAX_LEN).contains(&p.len()), "{p}");
            lengths.insert(p.len());
            let has = |set: &[u8]| p.bytes().any(|b| set.contains(&b));
            assert!(
                has(LOWER) && has(UPPER) && has(DIGITS) && has(SYMBOLS),
                "{p}"
            );
            assert!(
                p.bytes().all(|b| [LOWER, UPPER, DIGITS, SYMBOLS]
                    .iter()
                    .any(|s| s.contains(&b))),
                "{p}"
            );
            assert!(seen.insert(p), "a password repeated");
        }
        // Every length of the range turns up in 2000 draws (33 lengths).
        assert_eq!(lengths.len(), MAX_LEN - MIN_LEN);
    }
}
