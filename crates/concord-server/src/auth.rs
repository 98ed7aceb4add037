//! Who a connection is: client JWTs (HS256 or RS256; `sub` is the user, `exp` required, `nbf`
//! honoured, audience checked when configured), anonymous sessions when enabled, and the
//! server's own reconnect tokens (short-lived, re-issued on every use, revocable per user).
//!
//! The two kinds of token never pass for each other, even when one secret signs both (as
//! `concord serve` does by default): a reconnect token is signed with a key derived from the
//! reconnect secret, never with the secret itself, and carries a claim (`concord_token`) that
//! reconnect tokens require and client JWTs must not have.

use std::time::Duration;

use concord_protocol::{Auth, ErrorCode, ReconnectToken, SessionId, User, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, JwtKey};
use crate::revocation::{RevocationList, now_ms};

/// The audience of reconnect tokens.
const RECONNECT_AUDIENCE: &str = "concord-reconnect";
/// The value of the `concord_token` claim of a reconnect token.
const RECONNECT_KIND: &str = "reconnect";
/// Reconnect tokens are signed with HMAC-SHA256(reconnect secret, this label).
const RECONNECT_KEY_LABEL: &[u8] = b"concord reconnect token signing key, version 1";

/// Why a handshake's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (`nbf`)")]
    NotYetValid,
    #[error("the token was refused: {0}")]
    Invalid(String),
    #[error("the reconnect token was revoked; log in again")]
    Revoked,
    #[error("reconnect tokens cannot be checked: {0}")]
    RevocationsUnreadable(String),
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
            AuthError::NotYetValid
            | AuthError::Invalid(_)
            | AuthError::Revoked
            | AuthError::RevocationsUnreadable(_)
            | AuthError::JwtDisabled
            | AuthError::BadKey(_) => ErrorCode::AUTHENTICATION_FAILED,
        }
    }
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(error: jsonwebtoken::errors::Error) -> AuthError {
        match error.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            _ => AuthError::Invalid(error.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ClientClaims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    /// Present only in reconnect tokens: a client JWT carrying it is refused.
    #[serde(default)]
    concord_token: Option<IgnoredAny>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReconnectClaims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    /// The client token's `email`, kept so that reconnections keep the user's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    anon: bool,
    exp: u64,
    aud: String,
    /// When the server issued it (milliseconds since the Unix epoch): revocations refuse
    /// tokens issued up to their time.
    issued_ms: u64,
    /// Always [`RECONNECT_KIND`].
    concord_token: String,
    /// Only in the tokens a cluster node mints for an upstream session to another node
    /// (`forward.rs`): the client's session that the upstream one continues, so the owner
    /// names the client by the session id the client knows. Clients never hold such a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
}

/// Who a handshake's credentials name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub user: User,
    /// The email the token claims, if any.
    pub email: Option<String>,
    /// The client session an upstream session continues ([`Authenticator::upstream_token`]).
    pub session: Option<SessionId>,
}

/// Checks credentials and issues reconnect tokens.
pub struct Authenticator {
    jwt: Option<(DecodingKey, Validation)>,
    allow_anonymous: bool,
    reconnect_encoding: EncodingKey,
    reconnect_decoding: DecodingKey,
    reconnect_validation: Validation,
    reconnect_ttl: Duration,
    revocations: Option<RevocationList>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt.is_some())
            .field("allow_anonymous", &self.allow_anonymous)
            .field("reconnect_ttl", &self.reconnect_ttl)
            .field("revocations", &self.revocations.as_ref().map(RevocationList::path))
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Checks JWTs and reconnect tokens as `config` says. Revocations are checked only once
    /// given a list ([`Authenticator::with_revocations`]; a server uses its data dir's).
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
                validation.validate_nbf = true;
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
        if config.reconnect_secret.is_empty() {
            return Err(AuthError::BadKey("the reconnect secret is empty".into()));
        }
        let reconnect_key = jsonwebtoken::crypto::sign(
            RECONNECT_KEY_LABEL,
            &EncodingKey::from_secret(&config.reconnect_secret),
            Algorithm::HS256,
        )
        .map_err(|e| AuthError::BadKey(e.to_string()))?;
        let mut reconnect_validation = Validation::new(Algorithm::HS256);
        reconnect_validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        reconnect_validation.set_audience(&[RECONNECT_AUDIENCE]);
        reconnect_validation.leeway = 0;
        Ok(Authenticator {
            jwt,
            allow_anonymous: config.allow_anonymous,
            reconnect_encoding: EncodingKey::from_secret(reconnect_key.as_bytes()),
            reconnect_decoding: DecodingKey::from_secret(reconnect_key.as_bytes()),
            reconnect_validation,
            reconnect_ttl: config.reconnect_ttl,
            revocations: None,
        })
    }

    /// Refuses the reconnect tokens that `revocations` revokes.
    pub fn with_revocations(mut self, revocations: RevocationList) -> Authenticator {
        self.revocations = Some(revocations);
        self
    }

    /// The user behind `auth`. An anonymous user gets a fresh id (`anonymous:<uuid>`).
    pub fn authenticate(&self, auth: &Auth) -> Result<User, AuthError> {
        self.authenticate_with_email(auth).map(|(user, _)| user)
    }

    /// The user behind `auth`, and the email its token claims (if any).
    pub fn authenticate_with_email(
        &self,
        auth: &Auth,
    ) -> Result<(User, Option<String>), AuthError> {
        self.authenticate_handshake(auth).map(|found| (found.user, found.email))
    }

    /// Everything `auth` says once checked: the user, the email, and for an upstream
    /// session's token the client session it continues.
    pub fn authenticate_handshake(&self, auth: &Auth) -> Result<Authenticated, AuthError> {
        let (user, email) = match auth {
            Auth::Jwt(token) => {
                let (key, validation) = self.jwt.as_ref().ok_or(AuthError::JwtDisabled)?;
                let claims = jsonwebtoken::decode::<ClientClaims>(token, key, validation)?.claims;
                if claims.concord_token.is_some() {
                    return Err(AuthError::Invalid("a reconnect token is not a client JWT".into()));
                }
                if claims.sub.is_empty() {
                    return Err(AuthError::Invalid("`sub` is empty".into()));
                }
                let user =
                    User { id: UserId(claims.sub), display_name: claims.name, anonymous: false };
                (user, claims.email)
            }
            Auth::Anonymous { display_name } => {
                if !self.allow_anonymous {
                    return Err(AuthError::AnonymousDisabled);
                }
                let id = UserId(format!("anonymous:{}", uuid::Uuid::now_v7()));
                (User { id, display_name: display_name.clone(), anonymous: true }, None)
            }
            Auth::Reconnect(token) => {
                let claims = jsonwebtoken::decode::<ReconnectClaims>(
                    &token.0,
                    &self.reconnect_decoding,
                    &self.reconnect_validation,
                )?
                .claims;
                if claims.concord_token != RECONNECT_KIND {
                    return Err(AuthError::Invalid("not a reconnect token".into()));
                }
                if claims.anon && !self.allow_anonymous {
                    return Err(AuthError::AnonymousDisabled);
                }
                let id = UserId(claims.sub);
                if let Some(revocations) = &self.revocations {
                    let revoked_at = revocations
                        .revoked_at(&id)
                        .map_err(|e| AuthError::RevocationsUnreadable(e.to_string()))?;
                    if revoked_at.is_some_and(|at| claims.issued_ms <= at) {
                        return Err(AuthError::Revoked);
                    }
                }
                let user = User { id, display_name: claims.name, anonymous: claims.anon };
                let session = claims.session.map(SessionId);
                return Ok(Authenticated { user, email: claims.email, session });
            }
        };
        Ok(Authenticated { user, email, session: None })
    }

    /// A fresh reconnect token for `user`, valid for the configured time from now.
    pub fn reconnect_token(&self, user: &User) -> Result<ReconnectToken, AuthError> {
        self.reconnect_token_with_email(user, None)
    }

    /// A fresh reconnect token for `user` that carries `email` on.
    pub fn reconnect_token_with_email(
        &self,
        user: &User,
        email: Option<&str>,
    ) -> Result<ReconnectToken, AuthError> {
        self.mint_reconnect(user, email, None)
    }

    /// A reconnect token for a cluster node's upstream session (`forward.rs`) continuing the
    /// client session `session` of `user`: the owner gives the upstream session that id.
    /// Only ever sent from node to node.
    pub fn upstream_token(
        &self,
        user: &User,
        email: Option<&str>,
        session: &SessionId,
    ) -> Result<ReconnectToken, AuthError> {
        self.mint_reconnect(user, email, Some(session))
    }

    fn mint_reconnect(
        &self,
        user: &User,
        email: Option<&str>,
        session: Option<&SessionId>,
    ) -> Result<ReconnectToken, AuthError> {
        let claims = ReconnectClaims {
            sub: user.id.0.clone(),
            name: user.display_name.clone(),
            email: email.map(Into::into),
            anon: user.anonymous,
            exp: jsonwebtoken::get_current_timestamp() + self.reconnect_ttl.as_secs(),
            aud: RECONNECT_AUDIENCE.into(),
            issued_ms: now_ms(),
            concord_token: RECONNECT_KIND.into(),
            session: session.map(|session| session.0.clone()),
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

/// Mints an HS256 client JWT for `user` with `name` and `email` claims, valid for `ttl`
/// (development and tests).
pub fn mint_identity_token(
    secret: &[u8],
    user: &str,
    name: Option<&str>,
    email: Option<&str>,
    ttl: Duration,
) -> Result<String, AuthError> {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        email: Option<&'a str>,
    }
    let claims = Claims {
        sub: user,
        exp: jsonwebtoken::get_current_timestamp() + ttl.as_secs(),
        name,
        email,
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
    fn only_an_upstream_token_names_the_session_it_continues() {
        let auth = Authenticator::new(&config(None, true)).unwrap();
        let user = User { id: UserId("alice".into()), display_name: None, anonymous: false };
        let session = SessionId("0193-client-session".into());
        let upstream = auth.upstream_token(&user, Some("a@example.org"), &session).unwrap();
        let found = auth.authenticate_handshake(&Auth::Reconnect(upstream)).unwrap();
        assert_eq!(found.user, user);
        assert_eq!(found.email.as_deref(), Some("a@example.org"));
        assert_eq!(found.session, Some(session));
        // The tokens clients get carry no session, and neither do client JWTs.
        let plain = auth.reconnect_token(&user).unwrap();
        assert_eq!(auth.authenticate_handshake(&Auth::Reconnect(plain)).unwrap().session, None);
    }

    /// Signs `claims` as JWT with `key`.
    fn sign(claims: &serde_json::Value, key: &[u8]) -> String {
        jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(key)).unwrap()
    }

    fn derived_reconnect_key(secret: &[u8]) -> Vec<u8> {
        let key = EncodingKey::from_secret(secret);
        jsonwebtoken::crypto::sign(RECONNECT_KEY_LABEL, &key, Algorithm::HS256)
            .unwrap()
            .into_bytes()
    }

    #[test]
    fn with_one_secret_for_both_neither_kind_of_token_passes_for_the_other() {
        // As `concord serve` runs by default: no audience, one secret for both kinds.
        let mut shared = config(None, true);
        shared.reconnect_secret = b"client secret".to_vec();
        let auth = Authenticator::new(&shared).unwrap();
        let user = User { id: UserId("bob".into()), display_name: None, anonymous: false };
        let reconnect = auth.reconnect_token(&user).unwrap();
        assert_eq!(auth.authenticate(&Auth::Reconnect(reconnect.clone())).unwrap(), user);
        let refused = auth.authenticate(&Auth::Jwt(reconnect.0)).unwrap_err();
        assert!(matches!(refused, AuthError::Invalid(_)), "{refused:?}");
        assert_eq!(refused.code(), ErrorCode::AUTHENTICATION_FAILED);

        // Whatever its claims, a token signed with the secret itself is no reconnect token.
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "sub": "bob", "anon": false, "exp": now + 60, "aud": RECONNECT_AUDIENCE,
            "issued_ms": now * 1000, "concord_token": RECONNECT_KIND,
        });
        let forged = ReconnectToken(sign(&claims, b"client secret"));
        assert!(matches!(auth.authenticate(&Auth::Reconnect(forged)), Err(AuthError::Invalid(_))));

        // The claim is checked both ways: a client JWT must not carry it, and a token of the
        // reconnect key without it is no reconnect token.
        let jwt = sign(&claims, b"client secret");
        assert!(matches!(auth.authenticate(&Auth::Jwt(jwt)), Err(AuthError::Invalid(_))));
        let mut unmarked = claims.clone();
        unmarked["concord_token"] = "something else".into();
        let unmarked = sign(&unmarked, &derived_reconnect_key(b"client secret"));
        let refused = auth.authenticate(&Auth::Reconnect(ReconnectToken(unmarked))).unwrap_err();
        assert_eq!(refused, AuthError::Invalid("not a reconnect token".into()));
    }

    #[test]
    fn nbf_is_honoured_with_the_leeway() {
        let claims = |nbf: u64| {
            let now = jsonwebtoken::get_current_timestamp();
            serde_json::json!({ "sub": "alice", "exp": now + 3_600, "nbf": now + nbf })
        };
        let mut lenient = config(None, false);
        lenient.jwt.as_mut().unwrap().leeway = Duration::from_secs(30);
        let lenient = Authenticator::new(&lenient).unwrap();
        let strict = Authenticator::new(&config(None, false)).unwrap();
        let soon = sign(&claims(10), b"client secret");
        assert_eq!(lenient.authenticate(&Auth::Jwt(soon.clone())).unwrap().id.0, "alice");
        let refused = strict.authenticate(&Auth::Jwt(soon)).unwrap_err();
        assert_eq!(refused, AuthError::NotYetValid);
        assert_eq!(refused.code(), ErrorCode::AUTHENTICATION_FAILED);
        let later = sign(&claims(3_600), b"client secret");
        assert_eq!(lenient.authenticate(&Auth::Jwt(later)).unwrap_err(), AuthError::NotYetValid);
        let past = serde_json::json!({ "sub": "alice", "exp": u64::MAX / 2, "nbf": 1 });
        assert!(strict.authenticate(&Auth::Jwt(sign(&past, b"client secret"))).is_ok());
    }

    #[test]
    fn an_anonymous_user_comes_back_anonymous_and_not_once_anonymous_access_is_off() {
        let mut shared = config(None, true);
        shared.reconnect_secret = b"client secret".to_vec();
        let open = Authenticator::new(&shared).unwrap();
        let anonymous = open.authenticate(&Auth::Anonymous { display_name: Some("Ann".into()) });
        let anonymous = anonymous.unwrap();
        let token = open.reconnect_token(&anonymous).unwrap();
        let back = open.authenticate(&Auth::Reconnect(token.clone())).unwrap();
        assert_eq!(back, anonymous);
        assert!(back.anonymous);

        shared.allow_anonymous = false;
        let closed = Authenticator::new(&shared).unwrap();
        let refused = closed.authenticate(&Auth::Reconnect(token.clone())).unwrap_err();
        assert_eq!(refused, AuthError::AnonymousDisabled);
        assert_eq!(refused.code(), ErrorCode::ANONYMOUS_DISABLED);
        // Nor does it get in as a client JWT, as a named user.
        assert!(closed.authenticate(&Auth::Jwt(token.0)).is_err());
    }

    #[test]
    fn revoked_reconnect_tokens_are_refused_and_later_ones_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::new(&config(None, false))
            .unwrap()
            .with_revocations(RevocationList::in_data_dir(dir.path()));
        let user = |id: &str| User { id: UserId(id.into()), display_name: None, anonymous: false };
        let alice = auth.reconnect_token(&user("alice")).unwrap();
        let bob = auth.reconnect_token(&user("bob")).unwrap();
        assert!(auth.authenticate(&Auth::Reconnect(alice.clone())).is_ok());

        RevocationList::in_data_dir(dir.path()).revoke(&UserId("alice".into())).unwrap();
        let refused = auth.authenticate(&Auth::Reconnect(alice)).unwrap_err();
        assert_eq!(refused, AuthError::Revoked);
        assert_eq!(refused.code(), ErrorCode::AUTHENTICATION_FAILED);
        assert_eq!(auth.authenticate(&Auth::Reconnect(bob.clone())).unwrap(), user("bob"));
        // A token issued after the revocation is accepted.
        std::thread::sleep(Duration::from_millis(2));
        let fresh = auth.reconnect_token(&user("alice")).unwrap();
        assert_eq!(auth.authenticate(&Auth::Reconnect(fresh)).unwrap(), user("alice"));

        // A list that cannot be read refuses rather than accept a revoked token.
        std::fs::write(dir.path().join(crate::REVOCATION_FILE), "garbage\n").unwrap();
        let refused = auth.authenticate(&Auth::Reconnect(bob)).unwrap_err();
        assert!(matches!(refused, AuthError::RevocationsUnreadable(_)), "{refused:?}");
    }

    #[test]
    fn an_empty_reconnect_secret_is_refused() {
        let mut empty = config(None, false);
        empty.reconnect_secret.clear();
        assert!(matches!(Authenticator::new(&empty), Err(AuthError::BadKey(_))));
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
