//! Checkpoints: the log's signed word on its size and root, written as a C2SP tlog-checkpoint
//! inside a C2SP signed note with an Ed25519 signature, so that tools built for transparency
//! logs read and check it without knowing idmint.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use super::merkle::Hash;

/// The signature type byte of Ed25519 in signed notes.
const ED25519_TYPE: u8 = 0x01;
/// What starts every signature line: an em dash and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// The most signature lines a note may carry, and the largest note read, so a hostile file
/// costs little to refuse.
const MAX_SIGNATURES: usize = 100;
const MAX_NOTE: usize = 1 << 20;

/// Why a note, a checkpoint or a key is not good.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
    #[error("malformed key: {0}")]
    Key(String),
    #[error("the note carries no signature by {0}")]
    Unsigned(String),
    #[error("the signature by {0} does not verify: the note was changed or signed by another key")]
    BadSignature(String),
}

/// A tree head: the log's origin line, its size and its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name, unique to it: the first line of the checkpoint.
    pub origin: String,
    /// How many entries the tree holds.
    pub size: u64,
    /// The root hash of those entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint's text: origin, size and base64 root, a line each.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// A checkpoint from its text. Extension lines after the root are allowed and skipped.
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let bad = |why: &str| NoteError::Checkpoint(why.to_string());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("it does not end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty());
        let origin = origin.ok_or_else(|| bad("no origin line"))?;
        let size = lines.next().ok_or_else(|| bad("no size line"))?;
        // Decimal with no sign and no leading zero, as the format says.
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad("the size is not a decimal number"));
        }
        let size = size.parse().map_err(|_| bad("the size is too large"))?;
        let root = lines.next().ok_or_else(|| bad("no root line"))?;
        let root = B64
            .decode(root)
            .ok()
            .and_then(|r| Hash::try_from(r).ok())
            .ok_or_else(|| bad("the root is not a base64 SHA-256 hash"))?;
        if lines.any(str::is_empty) {
            return Err(bad("an empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

/// The 4-byte key ID of an Ed25519 key under `name`: the start of SHA-256(name, newline, type
/// byte, public key).
fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ED25519_TYPE]);
    ctx.update(public);
    let digest = ctx.finish();
    digest.as_ref()[..4].try_into().expect("four bytes")
}

/// A key name: not empty, no '+', no whitespace (the signed-note rules).
fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::Key(format!(
            "{name:?} is not a key name: it must be non-empty, without '+' or spaces"
        )));
    }
    Ok(())
}

/// Signs notes with an Ed25519 key under a name.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    pair: std::sync::Arc<Ed25519KeyPair>,
}

impl NoteSigner {
    /// The signer of the 32-byte Ed25519 `seed` under `name`.
    pub fn from_seed(name: &str, seed: &[u8]) -> Result<NoteSigner, NoteError> {
        check_name(name)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| NoteError::Key("an Ed25519 seed is 32 bytes".into()))?;
        Ok(NoteSigner {
            name: name.to_string(),
            id: key_id(name, pair.public_key().as_ref()),
            pair: std::sync::Arc::new(pair),
        })
    }

    /// The key others check this signer's notes with.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            public: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// `text` (which ends with a newline) as a signed note.
    pub fn sign(&self, text: &str) -> String {
        assert!(text.ends_with('\n'), "a note's text ends with a newline");
        let signature = self.pair.sign(text.as_bytes());
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(signature.as_ref());
        format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            B64.encode(blob)
        )
    }
}

/// A public key that checks notes, written `name+keyid+base64(type || key)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    public: Vec<u8>,
}

impl NoteVerifier {
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A verifier key from its text form.
    pub fn parse(text: &str) -> Result<NoteVerifier, NoteError> {
        let bad = |why: &str| NoteError::Key(why.to_string());
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("a verifier key is name+keyid+key"));
        };
        check_name(name)?;
        let id = u32::from_str_radix(id, 16)
            .ok()
            .filter(|_| id.len() == 8)
            .ok_or_else(|| bad("the key ID is not 8 hex digits"))?
            .to_be_bytes();
        let key = B64.decode(key).map_err(|_| bad("the key is not base64"))?;
        let Some((&ED25519_TYPE, public)) = key.split_first() else {
            return Err(bad("only Ed25519 keys (type 0x01) are read"));
        };
        if public.len() != 32 {
            return Err(bad("an Ed25519 public key is 32 bytes"));
        }
        if key_id(name, public) != id {
            return Err(bad("the key ID does not match the name and key"));
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            id,
            public: public.to_vec(),
        })
    }

    /// The text form.
    pub fn encode(&self) -> String {
        let mut key = vec![ED25519_TYPE];
        key.extend_from_slice(&self.public);
        format!(
            "{}+{}+{}",
            self.name,
            crate::ca::encode_hex(&self.id),
            B64.encode(key)
        )
    }

    /// The text of `note` once its signature by this key checks; signatures by other keys are
    /// passed over.
    pub fn open<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let bad = |why: &str| NoteError::Malformed(why.to_string());
        if note.len() > MAX_NOTE {
            return Err(bad("larger than 1 MiB"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures"))?;
        let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
        let signatures = signatures
            .strip_suffix('\n')
            .ok_or_else(|| bad("it does not end with a newline"))?;
        let mut found = false;
        for (n, line) in signatures.split('\n').enumerate() {
            if n == MAX_SIGNATURES {
                return Err(bad("more than 100 signatures"));
            }
            let line = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or_else(|| bad("a signature line does not start with an em dash"))?;
            let (name, blob) = line
                .split_once(' ')
                .ok_or_else(|| bad("a signature line is not name and signature"))?;
            let blob = B64
                .decode(blob)
                .map_err(|_| bad("a signature is not base64"))?;
            if blob.len() < 5 {
                return Err(bad("a signature is too short"));
            }
            if name != self.name || blob[..4] != self.id {
                continue;
            }
            if found {
                return Err(bad("two signatures by the same key"));
            }
            UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(text.as_bytes(), &blob[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            found = true;
        }
        if !found {
            return Err(NoteError::Unsigned(self.name.clone()));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The signed-note format's example key and note.
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    /// Its private key, as `PRIVATE+KEY+name+keyid+base64(type || seed)`.
    const SKEY: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const SIGNED: &str = "If you think cryptography is the answer to your problem,\n\
                          then you don't know what your problem is.\n\
                          \n\
                          \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn signer() -> NoteSigner {
        let key = B64.decode(SKEY).unwrap();
        assert_eq!(key[0], ED25519_TYPE);
        NoteSigner::from_seed("PeterNeumann", &key[1..]).unwrap()
    }

    #[test]
    fn the_reference_key_signs_and_checks_the_reference_note() {
        let s = signer();
        assert_eq!(s.verifier().encode(), VKEY);
        assert_eq!(NoteVerifier::parse(VKEY).unwrap(), s.verifier());
        // Ed25519 is deterministic: the same key signs the same text alike.
        assert_eq!(s.sign(TEXT), SIGNED);
        assert_eq!(s.verifier().open(SIGNED).unwrap(), TEXT);
    }

    #[test]
    fn a_changed_note_or_another_key_is_refused() {
        let v = signer().verifier();
        let changed = SIGNED.replace("cryptography", "cryptograph");
        assert_eq!(
            v.open(&changed),
            Err(NoteError::BadSignature("PeterNeumann".into()))
        );
        let other = NoteSigner::from_seed("PeterNeumann", &[7; 32]).unwrap();
        // Same name, another key: its ID differs, so the note is not signed by `v`.
        assert_eq!(
            v.open(&other.sign(TEXT)),
            Err(NoteError::Unsigned("PeterNeumann".into()))
        );
        // A second signature by another key is passed over.
        let both = format!(
            "{}{}",
            SIGNED,
            other.sign(TEXT).split_once("\n\n").unwrap().1
        );
        assert_eq!(v.open(&both).unwrap(), TEXT);
        for broken in [
            TEXT.to_string(),
            SIGNED.trim_end().to_string(),
            SIGNED.replace('\u{2014}', "-"),
            format!("{SIGNED}{}", SIGNED.split_once("\n\n").unwrap().1),
        ] {
            assert!(v.open(&broken).is_err(), "{broken:?}");
        }
    }

    #[test]
    fn keys_with_bad_parts_are_refused() {
        for bad in [
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+AhpcQ==",
            "PeterNeumann+c74f20a3",
            "PeterNeumann+xyz+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(NoteVerifier::parse(bad).is_err(), "{bad}");
        }
        assert!(NoteSigner::from_seed("a+b", &[1; 32]).is_err());
        assert!(NoteSigner::from_seed("ab", &[1; 31]).is_err());
    }

    #[test]
    fn checkpoints_read_back_and_malformed_ones_are_refused() {
        let c = Checkpoint {
            origin: "example.org/idmint/ledger".into(),
            size: 1234,
            root: [9; 32],
        };
        assert_eq!(Checkpoint::parse(&c.body()).unwrap(), c);
        let with_extension = format!("{}extension line\n", c.body());
        assert_eq!(Checkpoint::parse(&with_extension).unwrap(), c);
        let root = B64.encode([9u8; 32]);
        for bad in [
            format!("o\n0012\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n12\n{root}"),
            format!("\n12\n{root}\n"),
            "o\n12\nAAAA\n".to_string(),
            format!("o\n99999999999999999999999\n{root}\n"),
            format!("o\n12\n{root}\n\n"),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
