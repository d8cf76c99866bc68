//! Tokens, compared in constant time, against every configured token every time.

use super::error::ApiError;
use actix_web::http::header::AUTHORIZATION;
use actix_web::HttpRequest;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Which webhook token a request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No webhook token is configured.
    Open,
    Production,
    Sandbox,
}

/// The webhook's tokens: Adapty sends the exact configured value as `Authorization`.
/// Each environment may have a previous token too, accepted while tokens rotate.
pub struct WebhookAuth {
    production: [Option<SecretString>; 2],
    sandbox: [Option<SecretString>; 2],
}

impl WebhookAuth {
    pub fn new(production: [Option<SecretString>; 2], sandbox: [Option<SecretString>; 2]) -> Self {
        WebhookAuth {
            production,
            sandbox,
        }
    }

    pub fn is_open(&self) -> bool {
        self.production
            .iter()
            .chain(&self.sandbox)
            .all(Option::is_none)
    }

    pub fn check(&self, request: &HttpRequest) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller::Open);
        }
        let given = authorization(request);
        // Every comparison runs, whichever matches.
        let any = |tokens: &[Option<SecretString>; 2]| {
            tokens
                .iter()
                .map(|t| token_matches(t, given))
                .fold(false, |a, b| a | b)
        };
        match (any(&self.production), any(&self.sandbox)) {
            (true, _) => Ok(Caller::Production),
            (false, true) => Ok(Caller::Sandbox),
            (false, false) => Err(ApiError::Unauthorized),
        }
    }
}

/// The read API's token, sent as `Authorization: Bearer <token>`.
pub struct ReadAuth {
    token: Option<SecretString>,
}

impl ReadAuth {
    pub fn new(token: Option<SecretString>) -> Self {
        ReadAuth { token }
    }

    pub fn check(&self, request: &HttpRequest) -> Result<(), ApiError> {
        if self.token.is_none() {
            return Ok(());
        }
        let given = authorization(request)
            .strip_prefix(b"Bearer ")
            .unwrap_or_default();
        if token_matches(&self.token, given) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

fn authorization(request: &HttpRequest) -> &[u8] {
    request
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default()
}

fn token_matches(token: &Option<SecretString>, given: &[u8]) -> bool {
    token
        .as_ref()
        .is_some_and(|t| bool::from(t.expose_secret().as_bytes().ct_eq(given)))
}
