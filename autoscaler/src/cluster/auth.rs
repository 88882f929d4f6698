//! Who may feed the stat ingest: a bearer token checked with a `TokenReview` (authentication.k8s.io/v1),
//! accepted only when it belongs to one of the allowed identities (the activator's ServiceAccount). Fake load
//! could run a Deployment up to max-scale on GPUs, so nothing else is trusted. Answers are cached briefly, so
//! a reconnecting activator costs one review, not one per stream.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ebb_process::sync::Locked;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// How long a review's answer is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most cached answers (tokens are bounded in number: one per activator pod).
const CACHE_MAX: usize = 1024;

/// The outcome of checking a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An allowed identity.
    Allowed(String),
    /// A valid token of another identity (403).
    Forbidden(String),
    /// Not a valid token (401).
    Unauthenticated,
}

/// Why a token could not be checked (the API server could not be asked); the stream is refused with 503.
#[derive(Debug, thiserror::Error)]
#[error("token review failed: {0}")]
pub struct ReviewError(#[from] kube::Error);

/// Checks tokens against the API server.
#[derive(Debug)]
pub struct Authenticator {
    api: Api<TokenReview>,
    allowed: Vec<String>,
    cache: Mutex<HashMap<String, (Verdict, Instant)>>,
}

impl Authenticator {
    /// Accepts tokens of `allowed` users (`system:serviceaccount:NAMESPACE:NAME`).
    pub fn new(client: Client, allowed: Vec<String>) -> Self {
        Self { api: Api::all(client), allowed, cache: Mutex::default() }
    }

    /// Checks a bearer token.
    pub async fn check(&self, token: &str) -> Result<Verdict, ReviewError> {
        if token.is_empty() {
            return Ok(Verdict::Unauthenticated);
        }
        if let Some((verdict, at)) = self.cache.locked().get(token)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(verdict.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), ..Default::default() },
            ..Default::default()
        };
        let answer = self.api.create(&PostParams::default(), &review).await?;
        let status = answer.status.unwrap_or_default();
        let verdict = match status.user.and_then(|u| u.username) {
            Some(user) if status.authenticated == Some(true) => {
                if self.allowed.contains(&user) {
                    Verdict::Allowed(user)
                } else {
                    Verdict::Forbidden(user)
                }
            }
            _ => Verdict::Unauthenticated,
        };
        let mut cache = self.cache.locked();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), (verdict.clone(), Instant::now()));
        Ok(verdict)
    }
}
