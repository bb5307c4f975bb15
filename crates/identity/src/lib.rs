//! Secrets of msec principals: user passwords as Argon2id hashes (RFC 9106, PHC strings) and API
//! tokens that are random, shown once, stored only as a hash, scoped and expiring.
//!
//! This crate owns how secrets are made, stored and checked — with constant-time comparisons —
//! and nothing else: it never stores, never logs and never decides what a principal may do
//! (that is the policy crate's job). `Debug` of anything holding a secret prints no secret.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest password accepted (NIST SP 800-63B asks for at least 8; we ask for more).
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted: hashing is deliberately expensive, so bound the input.
pub const MAX_PASSWORD_BYTES: usize = 1024;
const TOKEN_PREFIX: &str = "msec_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("passwords need at least {MIN_PASSWORD_CHARS} characters")]
    PasswordTooShort,
    #[error("passwords may be at most {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Hashes a password with Argon2id (19 MiB, 2 passes, 1 lane: the OWASP baseline) and a fresh
/// random salt, as a PHC string that carries its own parameters.
pub fn hash_password(password: &str) -> Result<String, IdentityError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(IdentityError::PasswordTooShort);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(IdentityError::PasswordTooLong);
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| IdentityError::Hashing(e.to_string()))
}

/// Checks a password against a stored PHC string. False for a wrong password, an oversized
/// input or a malformed hash alike: the caller learns nothing more, and neither does an attacker.
pub fn verify_password(password: &str, phc: &str) -> bool {
    password.len() <= MAX_PASSWORD_BYTES
        && Argon2::default()
            .verify_password(password.as_bytes(), phc)
            .is_ok()
}

/// A hash to check a password against when the account does not exist: the same work as a
/// real check, so the time a refusal takes does not say whether the user exists. Its password
/// and salt are fixed, so that it cannot fail for want of randomness (an empty stand-in would
/// make unknown users fast to refuse); logging in with its password gains nothing, since the
/// caller refuses unknown users whatever the check says.
pub fn decoy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        Argon2::default()
            .hash_password_with_salt(b"msec decoy password", b"msec-decoy-salt.")
            .map(|h| h.to_string())
            // Fixed inputs: this either always works or never does, and a test checks it does.
            .expect("the decoy hash is computable")
    })
}

/// A random password for accounts created without one (nothing in msec has a default
/// password): 24 characters of base64url, 144 bits.
pub fn generate_password() -> Result<String, IdentityError> {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).map_err(|e| IdentityError::Random(e.to_string()))?;
    Ok(B64.encode(b))
}

/// What is stored for an API token: its public id and the SHA-256 of its secret. Tokens carry
/// 256 random bits, so a fast hash is enough; no password-style stretching is needed.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub id: String,
    pub secret_hash: [u8; 32],
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredToken({})", self.id)
    }
}

/// A freshly issued token: the text is shown to its owner once and never stored.
pub struct IssuedToken {
    pub text: String,
    pub stored: StoredToken,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedToken({})", self.stored.id)
    }
}

/// Issues a token `msec_<id>_<secret>`: a 16-hex-digit id (for lookup and revocation, safe to
/// log) and a 256-bit base64url secret.
pub fn issue_token() -> Result<IssuedToken, IdentityError> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| IdentityError::Random(e.to_string()))?;
    getrandom::fill(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
    let id = hex::encode(id);
    let secret = B64.encode(secret);
    Ok(IssuedToken {
        text: format!("{TOKEN_PREFIX}{id}_{secret}"),
        stored: StoredToken {
            id,
            secret_hash: Sha256::digest(secret.as_bytes()).into(),
        },
    })
}

/// The id part of a presented token, to look up its stored record; None if it is not shaped
/// like an msec token.
pub fn token_id(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some(id)
}

/// Checks a presented token against its stored record in constant time.
pub fn verify_token(text: &str, stored: &StoredToken) -> bool {
    let Some(rest) = text.strip_prefix(TOKEN_PREFIX) else {
        return false;
    };
    let Some((id, secret)) = rest.split_once('_') else {
        return false;
    };
    let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    // Both comparisons always run, so timing does not say which part was wrong.
    let id_ok = id.as_bytes().ct_eq(stored.id.as_bytes());
    let secret_ok = presented.ct_eq(&stored.secret_hash);
    bool::from(id_ok & secret_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoy_costs_what_a_real_hash_costs_and_opens_nothing() {
        let real = hash_password("a real password 123").unwrap();
        let params = |phc: &str| phc.split('$').take(4).collect::<Vec<_>>().join("$");
        assert!(decoy_hash().starts_with("$argon2id$"), "{}", decoy_hash());
        assert_eq!(params(decoy_hash()), params(&real));
        assert!(!verify_password("a real password 123", decoy_hash()));
        assert!(!verify_password("", decoy_hash()));
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let phc = hash_password("correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password("correct horse battery staple", &phc));
        assert!(!verify_password("correct horse battery stapl", &phc));
        assert!(!verify_password(
            "correct horse battery staple",
            "not a hash"
        ));
        // Salted: the same password never hashes the same way twice.
        assert_ne!(phc, hash_password("correct horse battery staple").unwrap());
        assert_eq!(hash_password("short"), Err(IdentityError::PasswordTooShort));
        assert_eq!(
            hash_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(IdentityError::PasswordTooLong)
        );
        assert!(!verify_password(&"x".repeat(MAX_PASSWORD_BYTES + 1), &phc));
        let generated = generate_password().unwrap();
        assert!(generated.len() >= MIN_PASSWORD_CHARS && hash_password(&generated).is_ok());
    }

    #[test]
    fn tokens_verify_only_exactly() {
        let issued = issue_token().unwrap();
        assert_eq!(token_id(&issued.text), Some(issued.stored.id.as_str()));
        assert!(verify_token(&issued.text, &issued.stored));
        let other = issue_token().unwrap();
        assert!(!verify_token(&other.text, &issued.stored));
        let mut tampered = issued.text.clone();
        tampered.pop();
        assert!(!verify_token(&tampered, &issued.stored));
        // The same secret under another id does not pass either.
        // The secret may itself contain '_' (base64url): it is everything after the id.
        let secret = issued.text["msec_".len() + 16 + 1..].to_string();
        let swapped = format!("msec_{}_{secret}", other.stored.id);
        assert!(!verify_token(&swapped, &issued.stored));
        for junk in [
            "",
            "msec_",
            "msec_abc_def",
            "bearer xyz",
            "msec_0123456789abcdef_",
        ] {
            assert!(
                !verify_token(junk, &issued.stored) && token_id(junk).is_none(),
                "{junk}"
            );
        }
        // Secrets never reach Debug output.
        assert!(!format!("{issued:?}").contains(&secret));
    }
}
