//! Secrets query-api makes and checks: API keys (what is stored is `common::auth::hash_key` of
//! the secret, which ingest and query-api look keys up by), console passwords (argon2id), webhook
//! signing secrets and random tokens.

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use common::auth::{KEY_PREFIX, hash_key};
use rand::RngCore;

/// A freshly generated API key: the secret (shown once) and what is stored.
pub struct GeneratedKey {
    pub secret: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Random hex token of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

/// A new signing secret for a webhook, as Standard Webhooks writes them: `whsec_` and the
/// base64 of 32 random bytes.
pub fn new_webhook_secret() -> String {
    use base64::Engine;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(raw))
}

pub fn generate_api_key() -> GeneratedKey {
    let secret = format!("{KEY_PREFIX}{}", random_token(24));
    GeneratedKey { prefix: secret[..KEY_PREFIX.len() + 8].to_owned(), hash: hash_key(&secret), secret }
}

/// argon2id hash of a password, in PHC string form.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))?
        .to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_prefixed_and_hash_to_what_is_stored() {
        let key = generate_api_key();
        assert!(key.secret.starts_with(KEY_PREFIX));
        assert_eq!(key.secret.len(), KEY_PREFIX.len() + 48);
        assert!(key.secret.starts_with(&key.prefix));
        assert_eq!(hash_key(&key.secret), key.hash);
        assert!(!format!("{key:?}").contains(&key.secret));
    }

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("battery staple", &hash));
    }
}
