//! Session encryption (protocol.md §5.4–§5.5): AES-256-GCM with the two halves of a
//! 64-byte KMS data key, 12-byte nonces, no associated data, wire form
//! `nonce ‖ ciphertext ‖ tag`. Pure: the caller supplies the key and the randomness.
//!
//! The agent encrypts with `key[0..32]` and decrypts with `key[32..64]`; the client the
//! other way round ([`Role`]). Agent nonces are a 96-bit counter from a random start,
//! incremented as three little-endian u32 words with carry (as upstream); client nonces
//! are random (as the official client), supplied by the caller.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

/// Bytes of the KMS data key (two AES-256 keys).
pub const DATA_KEY_LEN: usize = 64;
/// Nonce bytes at the front of every sealed payload.
pub const NONCE_BYTES: usize = NONCE_LEN;
/// Tag bytes at the end of every sealed payload.
pub const TAG_BYTES: usize = 16;
/// Bytes of the encryption challenge.
pub const CHALLENGE_LEN: usize = 64;
/// What the agent tells the user once the session is encrypted (§5.6).
pub const ENCRYPTED_NOTICE: &str = "This session is encrypted using AWS KMS.";

/// Which end of the session a cipher is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Encrypts with the first half.
    Agent,
    /// Encrypts with the second half.
    Client,
}

/// Encryption failed or a payload did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The data key is not 64 bytes.
    #[error("the KMS data key is {0} bytes, not 64")]
    KeyLength(usize),
    /// Too short to hold a nonce and a tag.
    #[error("an encrypted payload of {0} bytes is too short")]
    TooShort(usize),
    /// Authentication failed: wrong key, or the payload was altered.
    #[error("an encrypted payload did not decrypt (wrong key or altered data)")]
    Decrypt,
}

/// The two keys of one end, with its nonce counter.
pub struct SessionCipher {
    seal: LessSafeKey,
    open: LessSafeKey,
    counter: [u32; 3],
}

impl std::fmt::Debug for SessionCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCipher")
    }
}

impl SessionCipher {
    /// Keys for `role` from the 64-byte data key; `nonce_start` seeds the counter.
    ///
    /// # Errors
    /// A data key that is not 64 bytes.
    pub fn new(
        data_key: &[u8],
        role: Role,
        nonce_start: [u8; NONCE_BYTES],
    ) -> Result<Self, CryptoError> {
        if data_key.len() != DATA_KEY_LEN {
            return Err(CryptoError::KeyLength(data_key.len()));
        }
        let (first, second) = data_key.split_at(32);
        let (seal, open) = match role {
            Role::Agent => (first, second),
            Role::Client => (second, first),
        };
        let key = |k: &[u8]| {
            UnboundKey::new(&AES_256_GCM, k)
                .map(LessSafeKey::new)
                .map_err(|_| CryptoError::KeyLength(k.len()))
        };
        let word = |i: usize| {
            u32::from_le_bytes([
                nonce_start[i],
                nonce_start[i + 1],
                nonce_start[i + 2],
                nonce_start[i + 3],
            ])
        };
        Ok(Self {
            seal: key(seal)?,
            open: key(open)?,
            counter: [word(0), word(4), word(8)],
        })
    }

    /// The next counter nonce (the agent's scheme).
    pub fn next_nonce(&mut self) -> [u8; NONCE_BYTES] {
        let mut out = [0u8; NONCE_BYTES];
        for (i, w) in self.counter.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        for w in &mut self.counter {
            let (next, carry) = w.overflowing_add(1);
            *w = next;
            if !carry {
                break;
            }
        }
        out
    }

    /// Seals `plain` with the next counter nonce.
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        let nonce = self.next_nonce();
        self.seal_with(nonce, plain)
    }

    /// Seals `plain` with a given nonce (random nonces on the client side).
    pub fn seal_with(&self, nonce: [u8; NONCE_BYTES], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(NONCE_BYTES + plain.len() + TAG_BYTES);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .seal
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut out[NONCE_BYTES..],
            )
            .expect("AES-GCM sealing fails only for inputs beyond 64 GiB");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a sealed payload from the other end.
    ///
    /// # Errors
    /// Too short, or not sealed with the other end's key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_BYTES + TAG_BYTES {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let (nonce, rest) = sealed.split_at(NONCE_BYTES);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
        let mut buf = rest.to_vec();
        let plain_len = self
            .open
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Vec<u8> {
        (0u8..64).collect()
    }

    #[test]
    fn each_end_opens_what_the_other_sealed() {
        let mut agent = SessionCipher::new(&key(), Role::Agent, [0; 12]).unwrap();
        let client = SessionCipher::new(&key(), Role::Client, [0; 12]).unwrap();
        let sealed = agent.seal(b"output");
        assert_eq!(sealed.len(), 12 + 6 + 16);
        assert_eq!(client.open(&sealed).unwrap(), b"output");
        // An end cannot open its own payloads (the halves differ).
        assert_eq!(agent.open(&sealed), Err(CryptoError::Decrypt));
        let typed = client.seal_with([7; 12], b"ls\r");
        assert_eq!(agent.open(&typed).unwrap(), b"ls\r");
        let mut altered = typed.clone();
        altered[14] ^= 1;
        assert_eq!(agent.open(&altered), Err(CryptoError::Decrypt));
        assert_eq!(agent.open(&[0; 27]), Err(CryptoError::TooShort(27)));
        assert!(SessionCipher::new(&[0; 32], Role::Agent, [0; 12]).is_err());
    }

    /// The challenge round trip of §5.5: agent seals, client opens and re-seals with its
    /// own key, agent opens and compares.
    #[test]
    fn the_challenge_round_trip_works() {
        let mut agent = SessionCipher::new(&key(), Role::Agent, [9; 12]).unwrap();
        let client = SessionCipher::new(&key(), Role::Client, [0; 12]).unwrap();
        let challenge = [0x5a; CHALLENGE_LEN];
        let request = agent.seal(&challenge);
        let seen = client.open(&request).unwrap();
        let response = client.seal_with([1; 12], &seen);
        assert_eq!(agent.open(&response).unwrap(), challenge);
    }

    #[test]
    fn agent_nonces_count_as_three_little_endian_words_with_carry() {
        let mut start = [0u8; 12];
        start[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        start[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        start[8..].copy_from_slice(&5u32.to_le_bytes());
        let mut c = SessionCipher::new(&key(), Role::Agent, start).unwrap();
        assert_eq!(c.next_nonce(), start);
        let mut want = [0u8; 12];
        want[8..].copy_from_slice(&6u32.to_le_bytes());
        assert_eq!(c.next_nonce(), want);
        want[..4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(c.next_nonce(), want);
    }
}
