//! Who a connection is: client JWTs (HS256 or RS256; `sub` is the user, `exp` required,
//! audience checked when configured), anonymous sessions when enabled, and the server's own
//! reconnect tokens (HS256 with the server's secret, short-lived, re-issued on every use).

use std::time::Duration;

use concord_protocol::{Auth, ErrorCode, ReconnectToken, User, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, JwtKey};

/// The audience of reconnect tokens, so that a client JWT signed with the same secret is
/// never taken for one, nor the reverse.
const RECONNECT_AUDIENCE: &str = "concord-reconnect";

/// Why a handshake's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("the token has expired")]
    Expired,
    #[error("the token was refused: {0}")]
    Invalid(String),
    #[error("this server does not accept JWTs")]
    JwtDisabled,
    #[error("anonymous access is not enabled on this server")]
    AnonymousDisabled,
    #[error("the JWT key is not usable: {0}")]
    BadKey(String),
}

impl AuthError {
    /// The protocol code a handshake rejection carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Expired => ErrorCode::TOKEN_EXPIRED,
            AuthError::AnonymousDisabled => ErrorCode::ANONYMOUS_DISABLED,
            AuthError::Invalid(_) | AuthError::JwtDisabled | AuthError::BadKey(_) => {
                ErrorCode::AUTHENTICATION_FAILED
            }
        }
    }
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(error: jsonwebtoken::errors::Error) -> AuthError {
        match error.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(error.to_string()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ClientClaims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReconnectClaims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    anon: bool,
    exp: u64,
    aud: String,
}

/// Checks credentials and issues reconnect tokens.
pub struct Authenticator {
    jwt: Option<(DecodingKey, Validation)>,
    allow_anonymous: bool,
    reconnect_encoding: EncodingKey,
    reconnect_decoding: DecodingKey,
    reconnect_validation: Validation,
    reconnect_ttl: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt.is_some())
            .field("allow_anonymous", &self.allow_anonymous)
            .field("reconnect_ttl", &self.reconnect_ttl)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Authenticator, AuthError> {
        let jwt = match &config.jwt {
            None => None,
            Some(jwt) => {
                let (key, algorithm) = match &jwt.key {
                    JwtKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
                    JwtKey::Rs256PublicPem(pem) => (
                        DecodingKey::from_rsa_pem(pem)
                            .map_err(|e| AuthError::BadKey(e.to_string()))?,
                        Algorithm::RS256,
                    ),
                };
                let mut validation = Validation::new(algorithm);
                validation.leeway = jwt.leeway.as_secs();
                match &jwt.audience {
                    Some(audience) => {
                        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
                        validation.set_audience(&[audience]);
                    }
                    None => {
                        validation.set_required_spec_claims(&["exp", "sub"]);
                        validation.validate_aud = false;
                    }
                }
                Some((key, validation))
            }
        };
        let mut reconnect_validation = Validation::new(Algorithm::HS256);
        reconnect_validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        reconnect_validation.set_audience(&[RECONNECT_AUDIENCE]);
        reconnect_validation.leeway = 0;
        Ok(Authenticator {
            jwt,
            allow_anonymous: config.allow_anonymous,
            reconnect_encoding: EncodingKey::from_secret(&config.reconnect_secret),
            reconnect_decoding: DecodingKey::from_secret(&config.reconnect_secret),
            reconnect_validation,
            reconnect_ttl: config.reconnect_ttl,
        })
    }

    /// The user behind `auth`. An anonymous user gets a fresh id (`anonymous:<uuid>`).
    pub fn authenticate(&self, auth: &Auth) -> Result<User, AuthError> {
        match auth {
            Auth::Jwt(token) => {
                let (key, validation) = self.jwt.as_ref().ok_or(AuthError::JwtDisabled)?;
                let claims = jsonwebtoken::decode::<ClientClaims>(token, key, validation)?.claims;
                if claims.sub.is_empty() {
                    return Err(AuthError::Invalid("`sub` is empty".into()));
                }
                Ok(User { id: UserId(claims.sub), display_name: claims.name, anonymous: false })
            }
            Auth::Anonymous { display_name } => {
                if !self.allow_anonymous {
                    return Err(AuthError::AnonymousDisabled);
                }
                let id = UserId(format!("anonymous:{}", uuid::Uuid::now_v7()));
                Ok(User { id, display_name: display_name.clone(), anonymous: true })
            }
            Auth::Reconnect(token) => {
                let claims = jsonwebtoken::decode::<ReconnectClaims>(
                    &token.0,
                    &self.reconnect_decoding,
                    &self.reconnect_validation,
                )?
                .claims;
                if claims.anon && !self.allow_anonymous {
                    return Err(AuthError::AnonymousDisabled);
                }
                Ok(User {
                    id: UserId(claims.sub),
                    display_name: claims.name,
                    anonymous: claims.anon,
                })
            }
        }
    }

    /// A fresh reconnect token for `user`, valid for the configured time from now.
    pub fn reconnect_token(&self, user: &User) -> Result<ReconnectToken, AuthError> {
        let claims = ReconnectClaims {
            sub: user.id.0.clone(),
            name: user.display_name.clone(),
            anon: user.anonymous,
            exp: jsonwebtoken::get_current_timestamp() + self.reconnect_ttl.as_secs(),
            aud: RECONNECT_AUDIENCE.into(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.reconnect_encoding)
                .map_err(|e| AuthError::BadKey(e.to_string()))?;
        Ok(ReconnectToken(token))
    }
}

/// Mints an HS256 client JWT for `user`, valid for `ttl` (development and tests: real
/// deployments have their identity provider sign tokens).
pub fn mint_token(
    secret: &[u8],
    user: &str,
    audience: Option<&str>,
    ttl: Duration,
) -> Result<String, AuthError> {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
    }
    let claims = Claims {
        sub: user,
        exp: jsonwebtoken::get_current_timestamp() + ttl.as_secs(),
        aud: audience,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .map_err(|e| AuthError::BadKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtConfig;

    fn config(audience: Option<&str>, allow_anonymous: bool) -> AuthConfig {
        AuthConfig {
            jwt: Some(JwtConfig {
                key: JwtKey::Hs256(b"client secret".to_vec()),
                audience: audience.map(Into::into),
                leeway: Duration::ZERO,
            }),
            allow_anonymous,
            reconnect_secret: b"server secret".to_vec(),
            reconnect_ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_minted_token_names_its_user() {
        let auth = Authenticator::new(&config(None, false)).unwrap();
        let token = mint_token(b"client secret", "alice", None, Duration::from_secs(60)).unwrap();
        let user = auth.authenticate(&Auth::Jwt(token)).unwrap();
        assert_eq!(user.id, UserId("alice".into()));
        assert!(!user.anonymous);
    }

    #[test]
    fn wrong_secret_wrong_audience_and_expiry_are_refused() {
        let auth = Authenticator::new(&config(Some("concord"), false)).unwrap();
        let forged =
            mint_token(b"other", "alice", Some("concord"), Duration::from_secs(60)).unwrap();
        assert!(matches!(auth.authenticate(&Auth::Jwt(forged)), Err(AuthError::Invalid(_))));
        let elsewhere =
            mint_token(b"client secret", "alice", Some("x"), Duration::from_secs(60)).unwrap();
        assert!(matches!(auth.authenticate(&Auth::Jwt(elsewhere)), Err(AuthError::Invalid(_))));
        let no_audience =
            mint_token(b"client secret", "alice", None, Duration::from_secs(60)).unwrap();
        assert!(matches!(auth.authenticate(&Auth::Jwt(no_audience)), Err(AuthError::Invalid(_))));
        #[derive(Serialize)]
        struct Old<'a> {
            sub: &'a str,
            exp: u64,
            aud: &'a str,
        }
        let old =
            Old { sub: "alice", exp: jsonwebtoken::get_current_timestamp() - 120, aud: "concord" };
        let old = jsonwebtoken::encode(
            &Header::default(),
            &old,
            &EncodingKey::from_secret(b"client secret"),
        )
        .unwrap();
        let refused = auth.authenticate(&Auth::Jwt(old)).unwrap_err();
        assert_eq!(refused, AuthError::Expired);
        assert_eq!(refused.code(), ErrorCode::TOKEN_EXPIRED);
        assert!(matches!(
            auth.authenticate(&Auth::Jwt("not a jwt".into())),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        #[derive(Serialize)]
        struct Eternal<'a> {
            sub: &'a str,
        }
        let auth = Authenticator::new(&config(None, false)).unwrap();
        let token = jsonwebtoken::encode(
            &Header::default(),
            &Eternal { sub: "alice" },
            &EncodingKey::from_secret(b"client secret"),
        )
        .unwrap();
        assert!(matches!(auth.authenticate(&Auth::Jwt(token)), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn anonymous_only_when_enabled() {
        let closed = Authenticator::new(&config(None, false)).unwrap();
        let refused = closed.authenticate(&Auth::Anonymous { display_name: None }).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::ANONYMOUS_DISABLED);
        let open = Authenticator::new(&config(None, true)).unwrap();
        let a = open.authenticate(&Auth::Anonymous { display_name: Some("Ann".into()) }).unwrap();
        let b = open.authenticate(&Auth::Anonymous { display_name: None }).unwrap();
        assert!(a.anonymous && a.id != b.id);
    }

    #[test]
    fn reconnect_tokens_round_trip_and_are_not_client_jwts() {
        let auth = Authenticator::new(&config(None, true)).unwrap();
        let user =
            User { id: UserId("bob".into()), display_name: Some("Bob".into()), anonymous: false };
        let token = auth.reconnect_token(&user).unwrap();
        assert_eq!(auth.authenticate(&Auth::Reconnect(token.clone())).unwrap(), user);
        // Neither kind of token passes for the other.
        assert!(auth.authenticate(&Auth::Jwt(token.0)).is_err());
        let jwt = mint_token(b"server secret", "bob", None, Duration::from_secs(60)).unwrap();
        assert!(auth.authenticate(&Auth::Reconnect(ReconnectToken(jwt))).is_err());
        // Another server's token is refused.
        let mut other = config(None, true);
        other.reconnect_secret = b"another server".to_vec();
        let other = Authenticator::new(&other).unwrap();
        assert!(
            other.authenticate(&Auth::Reconnect(auth.reconnect_token(&user).unwrap())).is_err()
        );
    }

    #[test]
    fn an_expired_reconnect_token_is_refused() {
        let mut short = config(None, true);
        short.reconnect_ttl = Duration::ZERO;
        let auth = Authenticator::new(&short).unwrap();
        let user = User { id: UserId("bob".into()), display_name: None, anonymous: false };
        let token = auth.reconnect_token(&user).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(auth.authenticate(&Auth::Reconnect(token)).unwrap_err(), AuthError::Expired);
    }
}
