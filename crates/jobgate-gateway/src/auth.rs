//! Who is asking. Every handler takes a [`Principal`]: the owner of the jobs
//! it creates and the only one who may see them.
//!
//! With `JOBGATE_AUTH=jwt` the principal comes from a JWT (`sub`) that the
//! [`Verifier`] here checks; `crate::extract` takes the token from the
//! request. With `JOBGATE_AUTH=none` (development, loopback only) every
//! request belongs to `JOBGATE_DEFAULT_OWNER`. Tokens are never logged.
//!
//! This module knows the configuration and nothing above it: the extractor
//! that reads a request's token lives with the other extractors.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use jobgate_proto::ErrorCode;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, JwtKeys};
use crate::error::ApiError;

/// The scope (in a token's space-separated `scope` claim) that lets a
/// principal use the admin API: dead letters, queues, workers.
pub const ADMIN_SCOPE: &str = "jobgate:admin";

/// The authenticated owner of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub owner: String,
    /// When the credential expires (Unix seconds); `None` without auth.
    pub expires_at: Option<u64>,
    /// The token carries [`ADMIN_SCOPE`] (always so without auth, which is
    /// for development on loopback only).
    pub admin: bool,
}

impl Principal {
    /// Whether a job owned by `owner` is this principal's.
    pub fn owns(&self, owner: &str) -> bool {
        self.owner == owner
    }
}

pub(crate) fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// The claims jobgate reads.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// Space-separated scopes (OAuth 2.0 style); [`ADMIN_SCOPE`] among them
    /// grants the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
}

/// Where verification keys come from.
enum Keys {
    /// HS256 with a shared secret.
    Secret(DecodingKey),
    /// RS256 or ES256 with one public key.
    Public(DecodingKey, Algorithm),
    /// Keys by `kid`, from a JWKS file.
    Set(HashMap<String, (DecodingKey, Algorithm)>),
}

/// Verifies tokens as configured.
pub struct Verifier {
    keys: Keys,
    audience: Option<String>,
    issuer: Option<String>,
    leeway_s: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// The verifier `config` asks for: `None` unless `JOBGATE_AUTH=jwt`.
    /// Reads the key file, if the configuration names one.
    pub fn from_config(config: &Config) -> Result<Option<Self>, ConfigError> {
        let Some(source) = config.jwt_keys()? else {
            return Ok(None);
        };
        let fail = |message: String| ConfigError::new(message);
        let keys = match source {
            JwtKeys::Secret(secret) => Keys::Secret(DecodingKey::from_secret(secret.as_bytes())),
            JwtKeys::PublicKeyPem(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| fail(format!("JOBGATE_JWT_PUBLIC_KEY {}: {e}", path.display())))?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    Keys::Public(key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    Keys::Public(key, Algorithm::ES256)
                } else {
                    return Err(fail(
                        "JOBGATE_JWT_PUBLIC_KEY is not an RSA or EC public key in PEM".into(),
                    ));
                }
            }
            JwtKeys::Jwks(path) => Keys::Set(load_jwks(path).map_err(fail)?),
        };
        Ok(Some(Self {
            keys,
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            leeway_s: config.jwt_leeway_s,
        }))
    }

    /// The principal a token names, if it is valid now.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("the token is not a JWT"))?;
        let (key, algorithm) = match &self.keys {
            Keys::Secret(key) => (key, Algorithm::HS256),
            Keys::Public(key, algorithm) => (key, *algorithm),
            Keys::Set(keys) => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| unauthorized("the token has no kid"))?;
                let (key, algorithm) = keys
                    .get(kid)
                    .ok_or_else(|| unauthorized("unknown signing key"))?;
                (key, *algorithm)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            let reason = match error.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet",
                ErrorKind::InvalidAudience => "the token is for another audience",
                ErrorKind::InvalidIssuer => "the token is from another issuer",
                ErrorKind::InvalidSignature => "the token's signature is invalid",
                ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks sub or exp",
                _ => "the token is invalid",
            };
            unauthorized(reason)
        })?;
        let owner = data.claims.sub;
        let acceptable = !owner.is_empty()
            && owner.len() <= 256
            && !owner
                .chars()
                .any(|c| c.is_control() || c == '{' || c == '}');
        if !acceptable {
            return Err(unauthorized("the token's sub is not a usable owner name"));
        }
        let admin = data
            .claims
            .scope
            .as_deref()
            .is_some_and(|scope| scope.split_whitespace().any(|s| s == ADMIN_SCOPE));
        Ok(Principal {
            owner,
            expires_at: Some(data.claims.exp),
            admin,
        })
    }
}

fn load_jwks(path: &std::path::Path) -> Result<HashMap<String, (DecodingKey, Algorithm)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("JOBGATE_JWKS_FILE {}: {e}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("JOBGATE_JWKS_FILE is not a JWK set: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        // KeyAlgorithm names the same algorithms as Algorithm: map by name.
        let named = jwk
            .common
            .key_algorithm
            .and_then(|a| format!("{a:?}").parse::<Algorithm>().ok());
        let algorithm = match named {
            Some(algorithm) => algorithm,
            None => match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK {kid}: {e}"))?;
        keys.insert(kid, (key, algorithm));
    }
    if keys.is_empty() {
        return Err("JOBGATE_JWKS_FILE holds no usable key (each needs a kid)".into());
    }
    Ok(keys)
}

/// Mints an HS256 token for `owner` valid `ttl_s` seconds (for `jobgate
/// token` and tests).
pub fn mint_hs256(
    secret: &str,
    owner: &str,
    ttl_s: u64,
    audience: Option<&str>,
    issuer: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    mint_hs256_with_scope(secret, owner, ttl_s, audience, issuer, None)
}

/// As [`mint_hs256`], with a `scope` claim (e.g. [`ADMIN_SCOPE`]).
pub fn mint_hs256_with_scope(
    secret: &str,
    owner: &str,
    ttl_s: u64,
    audience: Option<&str>,
    issuer: Option<&str>,
    scope: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: owner.to_owned(),
        exp: now + ttl_s,
        aud: audience.map(str::to_owned),
        iss: issuer.map(str::to_owned),
        scope: scope.map(str::to_owned),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-development-secret-of-at-least-32-bytes";

    fn verifier() -> Verifier {
        Verifier {
            keys: Keys::Secret(DecodingKey::from_secret(SECRET.as_bytes())),
            audience: None,
            issuer: None,
            leeway_s: 0,
        }
    }

    fn principal(scope: Option<&str>) -> Principal {
        let token = mint_hs256_with_scope(SECRET, "ana", 60, None, None, scope).expect("token");
        verifier().verify(&token).expect("valid")
    }

    #[test]
    fn only_the_admin_scope_grants_the_admin_api() {
        assert!(!principal(None).admin);
        assert!(principal(Some(ADMIN_SCOPE)).admin);
        assert!(principal(Some("jobs:read jobgate:admin")).admin);
        assert!(!principal(Some("jobgate:admins jobgate")).admin);
        assert_eq!(principal(Some(ADMIN_SCOPE)).owner, "ana");
    }
}
