//! The HTTP client of Adapty's server-side API: one profile at a time, by profile id
//! or by your own user id, with Adapty's documented answers mapped to what entitled
//! does about each. The secret key is sent, never logged (reqwest's errors name the
//! URL, which holds no key).

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Adapty's profile route, under `--adapty-api-url`.
const PROFILE_PATH: &str = "/api/v2/server-side-api/profile/";
/// One request may take this long (Adapty answers in well under a second).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at one profile before it counts as failed (429s included).
const MAX_ATTEMPTS: u32 = 6;
/// The first wait after a 5xx or a timeout; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest `Retry-After` honoured; a longer one is waited this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Which profile to ask about.
#[derive(Clone, Copy, Debug)]
pub enum Who<'a> {
    Profile(&'a str),
    User(&'a str),
}

/// A [`Who`] that owns its id (to outlive a request).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Id {
    Profile(String),
    User(String),
}

impl Id {
    pub fn who(&self) -> Who<'_> {
        match self {
            Id::Profile(id) => Who::Profile(id),
            Id::User(id) => Who::User(id),
        }
    }
}

impl Who<'_> {
    pub fn to_owned(&self) -> Id {
        match *self {
            Who::Profile(id) => Id::Profile(id.to_owned()),
            Who::User(id) => Id::User(id.to_owned()),
        }
    }

    fn header(&self) -> (&'static str, &str) {
        match self {
            Who::Profile(id) => ("adapty-profile-id", id),
            Who::User(id) => ("adapty-customer-user-id", id),
        }
    }
}

/// What Adapty said.
#[derive(Debug)]
pub enum Answer {
    /// 200: the body, `{"data": {…}}`.
    Profile(String),
    /// 404 `profile_does_not_exist`.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401 (or 403): nothing will work until the key is fixed.
    #[error("Adapty refused the secret key (401): check --adapty-secret-key (ENTITLED_ADAPTY_SECRET_KEY)")]
    Unauthorized,
    /// 5xx, timeouts, connection errors, after every retry; or an answer Adapty does
    /// not document.
    #[error("Adapty's API did not answer: {0}")]
    Unavailable(String),
}

/// The client: cheap to share (`Arc`), one connection pool.
pub struct AdaptyApi {
    http: reqwest::Client,
    url: String,
    key: SecretString,
    limiter: DefaultDirectRateLimiter,
}

impl AdaptyApi {
    /// `rate`: requests a second at most, over every caller of this client.
    pub fn new(url: &str, key: SecretString, rate: u32) -> Result<Arc<Self>, String> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("entitled/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
        Ok(Arc::new(AdaptyApi {
            http,
            url: format!("{}{PROFILE_PATH}", url.trim_end_matches('/')),
            key,
            limiter: RateLimiter::direct(Quota::per_second(rate)),
        }))
    }

    /// Waits for the rate limit's next slot (for requests made on this client's pace
    /// by someone else: `entitled sync` through a daemon).
    pub async fn pace(&self) {
        self.limiter.until_ready().await;
    }

    /// Fetches one profile: waits for the rate limit, honours 429's `Retry-After`,
    /// retries 5xx and timeouts with a doubling backoff.
    pub async fn fetch(&self, who: Who<'_>) -> Result<Answer, ApiError> {
        let (header, id) = who.header();
        let mut backoff = FIRST_BACKOFF;
        let mut wait = Duration::ZERO;
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                // The wait the previous attempt asked for: its `Retry-After`, or the backoff.
                tokio::time::sleep(std::mem::replace(&mut wait, Duration::ZERO)).await;
            }
            self.limiter.until_ready().await;
            let sent = self
                .http
                .get(&self.url)
                .header(
                    reqwest::header::AUTHORIZATION,
                    format!("Api-Key {}", self.key.expose_secret()),
                )
                .header(header, id)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(error) if error.is_builder() => {
                    counted("invalid_request");
                    return Err(ApiError::Unavailable(format!(
                        "cannot ask for '{id}': {error}"
                    )));
                }
                Err(error) => {
                    counted(if error.is_timeout() {
                        "timeout"
                    } else {
                        "transport_error"
                    });
                    last = error.without_url().to_string();
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
            };
            let status = response.status().as_u16();
            match status {
                200 => match response.text().await {
                    Ok(body) => {
                        counted("ok");
                        return Ok(Answer::Profile(body));
                    }
                    Err(error) => {
                        counted("transport_error");
                        last = error.without_url().to_string();
                    }
                },
                404 => {
                    counted("not_found");
                    return Ok(Answer::Unknown);
                }
                401 | 403 => {
                    counted("unauthorized");
                    return Err(ApiError::Unauthorized);
                }
                429 => {
                    counted("rate_limited");
                    let asked = retry_after(&response).unwrap_or(Duration::from_secs(1));
                    last = "429 Too Many Requests".to_owned();
                    wait = asked.min(MAX_RETRY_AFTER);
                    continue;
                }
                500..=599 => {
                    counted("server_error");
                    last = format!("{status} from Adapty");
                }
                _ => {
                    counted("unexpected");
                    return Err(ApiError::Unavailable(format!("{status} from Adapty")));
                }
            }
            wait = backoff;
            backoff *= 2;
        }
        // No wait after the last attempt: the caller hears of the failure at once.
        Err(ApiError::Unavailable(last))
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Adapty).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: f64 = value.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn counted(outcome: &'static str) {
    metrics::counter!("entitled_adapty_requests_total", "outcome" => outcome).increment(1);
}
