//! RS256 access (15 min) and refresh (7 d) tokens. Only RS256 is accepted: `none`, HS256
//! signed with the public key, and every other algorithm are rejected by construction.

use super::{Principal, Role};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
pub const REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Clock skew tolerated on exp/nbf between hosts.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("cannot read key {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("key {path} is not an RSA PEM key: {message}")]
    BadKey { path: String, message: String },
    #[error("no private key configured: tokens cannot be issued here")]
    NoPrivateKey,
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("refresh token already used or revoked")]
    RefreshReused,
    #[error("signing failed: {0}")]
    Sign(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Access,
    Refresh,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    pub typ: TokenType,
    /// Refresh-token family: reuse of a rotated token revokes the whole family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// Live refresh tokens (jti → family) and revoked families.
#[derive(Default)]
struct RefreshState {
    live: HashMap<String, String>,
    revoked_families: HashSet<String>,
}

pub struct Tokens {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
    refresh: Mutex<RefreshState>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_key(path: &Path) -> Result<Vec<u8>, JwtError> {
    std::fs::read(path).map_err(|source| JwtError::ReadKey {
        path: path.display().to_string(),
        source,
    })
}

impl Tokens {
    pub fn from_pem(
        public_pem: &[u8],
        private_pem: Option<&[u8]>,
        issuer: &str,
        audience: &str,
    ) -> Result<Tokens, JwtError> {
        let decoding = DecodingKey::from_rsa_pem(public_pem).map_err(|e| JwtError::BadKey {
            path: "jwt_public_key".into(),
            message: e.to_string(),
        })?;
        let encoding = private_pem
            .map(|pem| {
                EncodingKey::from_rsa_pem(pem).map_err(|e| JwtError::BadKey {
                    path: "jwt_private_key".into(),
                    message: e.to_string(),
                })
            })
            .transpose()?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Ok(Tokens {
            decoding,
            encoding,
            validation,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            refresh: Mutex::new(RefreshState::default()),
        })
    }

    pub fn from_files(
        public: &Path,
        private: Option<&Path>,
        issuer: &str,
        audience: &str,
    ) -> Result<Tokens, JwtError> {
        let public_pem = read_key(public)?;
        let private_pem = private.map(read_key).transpose()?;
        Tokens::from_pem(&public_pem, private_pem.as_deref(), issuer, audience)
    }

    pub fn can_issue(&self) -> bool {
        self.encoding.is_some()
    }

    fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let key = self.encoding.as_ref().ok_or(JwtError::NoPrivateKey)?;
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, key)
            .map_err(|e| JwtError::Sign(e.to_string()))
    }

    fn claims(
        &self,
        principal: &Principal,
        typ: TokenType,
        ttl: Duration,
        fam: Option<String>,
    ) -> Claims {
        let now = now_secs();
        Claims {
            sub: principal.subject.clone(),
            role: principal.role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            typ,
            fam,
        }
    }

    /// A 15-minute access token (what `warden token issue` prints).
    pub fn issue_access(&self, principal: &Principal) -> Result<String, JwtError> {
        self.sign(&self.claims(principal, TokenType::Access, ACCESS_TTL, None))
    }

    /// A fresh access + refresh pair starting a new refresh family.
    pub fn issue_pair(&self, principal: &Principal) -> Result<TokenPair, JwtError> {
        self.pair_in_family(principal, uuid::Uuid::new_v4().to_string())
    }

    fn pair_in_family(&self, principal: &Principal, family: String) -> Result<TokenPair, JwtError> {
        let access = self.issue_access(principal)?;
        let refresh_claims = self.claims(
            principal,
            TokenType::Refresh,
            REFRESH_TTL,
            Some(family.clone()),
        );
        let refresh = self.sign(&refresh_claims)?;
        if let Ok(mut state) = self.refresh.lock() {
            state.live.insert(refresh_claims.jti, family);
        }
        Ok(TokenPair {
            access_token: access,
            refresh_token: refresh,
            token_type: "Bearer",
            expires_in: ACCESS_TTL.as_secs(),
        })
    }

    fn decode(&self, token: &str) -> Result<Claims, JwtError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| JwtError::Invalid(e.to_string()))
    }

    /// Validates an access token (signature, algorithm, exp, nbf, iss, aud, type).
    pub fn verify_access(&self, token: &str) -> Result<Principal, JwtError> {
        let claims = self.decode(token)?;
        if claims.typ != TokenType::Access {
            return Err(JwtError::Invalid("not an access token".into()));
        }
        Ok(Principal {
            subject: claims.sub,
            role: claims.role,
        })
    }

    /// Rotates a refresh token: the presented one is spent, a new pair is issued. Presenting a
    /// spent token revokes its whole family (a stolen token stops working for both parties).
    pub fn refresh(&self, token: &str) -> Result<TokenPair, JwtError> {
        let claims = self.decode(token)?;
        if claims.typ != TokenType::Refresh {
            return Err(JwtError::Invalid("not a refresh token".into()));
        }
        let family = {
            let mut state = self
                .refresh
                .lock()
                .map_err(|_| JwtError::Invalid("state poisoned".into()))?;
            match state.live.remove(&claims.jti) {
                Some(family) if !state.revoked_families.contains(&family) => family,
                _ => {
                    if let Some(fam) = &claims.fam {
                        state.revoked_families.insert(fam.clone());
                        state.live.retain(|_, f| f != fam);
                    }
                    return Err(JwtError::RefreshReused);
                }
            }
        };
        self.pair_in_family(
            &Principal {
                subject: claims.sub,
                role: claims.role,
            },
            family,
        )
    }
}
