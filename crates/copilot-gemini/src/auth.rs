//! Google Cloud credentials for Vertex AI: OAuth 2.0 access tokens from Application Default
//! Credentials, cached and refreshed before they expire.
//!
//! Two sources are supported, the ones Google Cloud workloads use:
//! - a **service-account key file** (`GOOGLE_APPLICATION_CREDENTIALS`): a JWT signed with the
//!   file's RSA key (RS256, by `ring`) is exchanged at the file's `token_uri` for an access token
//!   (the `urn:ietf:params:oauth:grant-type:jwt-bearer` grant);
//! - the **metadata server** of Cloud Run, GKE (Workload Identity) and Compute Engine, which hands
//!   out the attached service account's tokens (`GCE_METADATA_HOST` overrides its host).
//!
//! [`TokenCache`] keeps the current token and fetches a new one once it is within a minute of
//! expiring (or past half its life, for short-lived ones). One fetch runs at a time: callers that
//! arrive meanwhile wait for it and share its outcome, success or failure. After Vertex refused a
//! token (401), [`TokenCache::replace`] fetches a new one unless another caller already has.
//!
//! Everything that comes back is bounded: the response body (64 KiB), the request (30 s), the
//! lifetime a token is trusted for (`expires_in` clamped to an hour). Tokens and private keys never
//! reach `Debug` output, logs or error messages.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use copilot_http::{HttpClient, Reading, root_cause};
use copilot_provider::ProviderError;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

/// The scope Vertex AI needs.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Where a key file without `token_uri` exchanges its JWTs.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The metadata server's name inside Google Cloud; `GCE_METADATA_HOST` overrides it.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Google accepts assertions valid for at most an hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;

/// A key file is a few KiB; anything much larger is not one.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// A token response is a few hundred bytes.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// An access token longer than this is refused (Google's are a few hundred bytes to 2 KiB).
const MAX_ACCESS_TOKEN_BYTES: usize = 8 * 1024;

/// The whole token request: connecting, sending, reading the answer.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A token is never trusted for longer than this, whatever `expires_in` says (Google's last an
/// hour).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A token response without `expires_in` is trusted for this long.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// A token is replaced this long before it expires (or at half its life, if that is sooner).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// What to say when no credentials work, wherever that is found out.
const HOW_TO_AUTHENTICATE: &str = "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on Cloud Run/GKE with a service account attached (Workload Identity on GKE)";

/// Where Vertex AI access tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoogleCredentials {
    /// Application Default Credentials, resolved when the provider is built: the service-account
    /// key file `GOOGLE_APPLICATION_CREDENTIALS` names (a missing file is an error, with no
    /// fallback), else gcloud's well-known ADC file if it exists and holds a service-account key,
    /// else the metadata server at `GCE_METADATA_HOST` or `metadata.google.internal`.
    ApplicationDefault,
    /// A service-account key file (the JSON Google Cloud's console downloads).
    ServiceAccountFile(PathBuf),
    /// The metadata server at `host` (`host` or `host:port`).
    MetadataServer { host: String },
}

/// Why credentials cannot be set up. Never includes a key.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the Google credentials file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("the Google credentials file {path} is not usable: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid metadata server host {host:?} (GCE_METADATA_HOST): {reason}")]
    MetadataHost { host: String, reason: String },
}

/// Why no token could be had. Converted to a [`ProviderError`] at the adapter's edge; the
/// messages say what to do and never include a token or an assertion.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum TokenError {
    /// The token endpoint or metadata server refused the credentials.
    #[error("{0}")]
    Refused(String),
    /// The token endpoint or metadata server could not be reached or failed.
    #[error("{0}")]
    Unreachable(String),
    /// It answered, but not with a usable token.
    #[error("{0}")]
    Malformed(String),
}

impl From<TokenError> for ProviderError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Refused(message) => ProviderError::Unauthorized(message),
            TokenError::Unreachable(message) => ProviderError::Unreachable(message),
            TokenError::Malformed(message) => ProviderError::Protocol(message),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sources

/// A resolved source of tokens.
pub(crate) enum Source {
    ServiceAccount(Box<ServiceAccount>),
    Metadata { url: Url, host: String },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::ServiceAccount(account) => f
                .debug_struct("ServiceAccount")
                .field("email", &account.email)
                .field("key_file", &account.path)
                .field("token_uri", &account.token_uri.as_str())
                .finish_non_exhaustive(),
            Source::Metadata { host, .. } => f.debug_struct("MetadataServer").field("host", host).finish(),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::ServiceAccount(account) => {
                write!(f, "service account {} (key file {})", account.email, account.path.display())
            }
            Source::Metadata { host, .. } => write!(f, "the metadata server at {host}"),
        }
    }
}

/// A service-account key, ready to sign assertions.
pub(crate) struct ServiceAccount {
    email: String,
    key_id: Option<String>,
    key: RsaKeyPair,
    token_uri: Url,
    quota_project: Option<String>,
    /// The key file, named in messages.
    path: PathBuf,
}

/// The fields of a credentials file that matter here. No `Debug`: it holds the private key.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    client_email: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    quota_project_id: Option<String>,
}

impl Source {
    /// Resolves `credentials`; `env` reads an environment variable (the process's, or a test's).
    pub(crate) fn resolve(
        credentials: &GoogleCredentials,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Source, CredentialsError> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        match credentials {
            GoogleCredentials::ServiceAccountFile(path) => Source::service_account(path),
            GoogleCredentials::MetadataServer { host } => Source::metadata(host),
            GoogleCredentials::ApplicationDefault => {
                if let Some(path) = env("GOOGLE_APPLICATION_CREDENTIALS") {
                    return Source::service_account(Path::new(path.trim()));
                }
                let well_known = env("HOME")
                    .map(|home| Path::new(&home).join(".config/gcloud/application_default_credentials.json"));
                if let Some(path) = well_known.filter(|p| p.is_file()) {
                    return Source::service_account(&path);
                }
                Source::metadata(env("GCE_METADATA_HOST").as_deref().map(str::trim).unwrap_or(DEFAULT_METADATA_HOST))
            }
        }
    }

    fn metadata(host: &str) -> Result<Source, CredentialsError> {
        let invalid =
            |reason: &str| CredentialsError::MetadataHost { host: host.to_owned(), reason: reason.to_owned() };
        if host.is_empty() || host.contains(['/', '?', '#', '@']) || host.contains(char::is_whitespace) {
            return Err(invalid("expected a host name or IP address, with an optional port"));
        }
        let mut url =
            Url::parse(&format!("http://{host}{METADATA_TOKEN_PATH}")).map_err(|e| invalid(&e.to_string()))?;
        url.query_pairs_mut().append_pair("scopes", CLOUD_PLATFORM_SCOPE);
        Ok(Source::Metadata { url, host: host.to_owned() })
    }

    fn service_account(path: &Path) -> Result<Source, CredentialsError> {
        let unreadable = |reason: String| CredentialsError::Unreadable { path: path.to_owned(), reason };
        let invalid = |reason: String| CredentialsError::Invalid { path: path.to_owned(), reason };
        let size = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?.len();
        if size > MAX_KEY_FILE_BYTES {
            return Err(invalid(format!("it is {size} bytes; a key file is a few KiB")));
        }
        let text = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        // serde_json's messages give a position, never the text.
        let file: KeyFile =
            serde_json::from_slice(&text).map_err(|e| invalid(format!("it is not a credentials JSON file ({e})")))?;
        match file.kind.as_deref() {
            Some("service_account") | None => {}
            Some(other) => {
                return Err(invalid(format!(
                    "it holds credentials of type \"{other}\"; Copilot uses service-account keys (\"service_account\") and the metadata server: {HOW_TO_AUTHENTICATE}"
                )));
            }
        }
        let email = file
            .client_email
            .filter(|e| !e.trim().is_empty())
            .ok_or_else(|| invalid("it has no client_email".into()))?;
        let pem = file.private_key.ok_or_else(|| invalid("it has no private_key".into()))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| invalid("its private_key is not a PEM-encoded PKCS#8 key".into()))?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| invalid(format!("its private_key is not a usable RSA key ({e})")))?;
        let token_uri = file.token_uri.filter(|u| !u.trim().is_empty()).unwrap_or_else(|| DEFAULT_TOKEN_URI.into());
        let token_uri = copilot_http::parse_base_url(token_uri.trim(), DEFAULT_TOKEN_URI)
            .map_err(|reason| invalid(format!("its token_uri is not usable: {reason}")))?;
        Ok(Source::ServiceAccount(Box::new(ServiceAccount {
            email: email.trim().to_owned(),
            key_id: file.private_key_id.filter(|id| !id.is_empty()),
            key,
            token_uri,
            quota_project: file.quota_project_id.filter(|p| !p.trim().is_empty()),
            path: path.to_owned(),
        })))
    }

    /// The project to bill quota to (`x-goog-user-project`), when the credentials name one.
    pub(crate) fn quota_project(&self) -> Option<&str> {
        match self {
            Source::ServiceAccount(account) => account.quota_project.as_deref(),
            Source::Metadata { .. } => None,
        }
    }

    /// Asks for a new token.
    async fn fetch(&self, client: &HttpClient) -> Result<Fetched, TokenError> {
        match self {
            Source::ServiceAccount(account) => account.fetch(client).await,
            Source::Metadata { url, host } => fetch_from_metadata(client, url, host).await,
        }
    }
}

impl ServiceAccount {
    /// The signed JWT that asks for a cloud-platform token, valid for an hour from `now`.
    fn assertion(&self, now: u64) -> Result<String, TokenError> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(id) = &self.key_id {
            header["kid"] = id.as_str().into();
        }
        let claims = serde_json::json!({
            "iss": self.email,
            "scope": CLOUD_PLATFORM_SCOPE,
            "aud": self.token_uri.as_str(),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), jwt.as_bytes(), &mut signature).map_err(|_| {
            TokenError::Malformed(format!("cannot sign with the service-account key in {}", self.path.display()))
        })?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jwt)
    }

    async fn fetch(&self, client: &HttpClient) -> Result<Fetched, TokenError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let assertion = self.assertion(now)?;
        // The assertion is base64url and dots: nothing in it needs escaping.
        let body = format!("grant_type={}&assertion={assertion}", percent_encode(JWT_BEARER_GRANT));
        let request = client
            .post(self.token_uri.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .timeout(TOKEN_REQUEST_TIMEOUT)
            .body(body);
        let what = format!("Google's token endpoint {} (service account {})", self.token_uri, self.email);
        let (status, body) = exchange(client, request, &what).await?;
        if (200..300).contains(&status) {
            return parse_token(&body, &what);
        }
        let detail = oauth_error(&body);
        let message = format!("{what} refused the key in {} (HTTP {status}: {detail})", self.path.display());
        Err(match status {
            429 | 500.. => TokenError::Unreachable(message),
            _ => TokenError::Refused(format!(
                "{message}: the key may be deleted or disabled, or this machine's clock is wrong; create a new key, or {HOW_TO_AUTHENTICATE}"
            )),
        })
    }
}

async fn fetch_from_metadata(client: &HttpClient, url: &Url, host: &str) -> Result<Fetched, TokenError> {
    let request = client.get(url.clone()).header("Metadata-Flavor", "Google").timeout(TOKEN_REQUEST_TIMEOUT);
    let what = format!("the metadata server at {host}");
    let (status, body) = exchange(client, request, &what).await.map_err(|err| match err {
        TokenError::Unreachable(message) => {
            TokenError::Unreachable(format!("{message}. No Google credentials found: {HOW_TO_AUTHENTICATE}"))
        }
        other => other,
    })?;
    match status {
        200..300 => parse_token(&body, &what),
        404 => Err(TokenError::Refused(format!(
            "{what} has no service account for this workload (HTTP 404): attach a service account to the Cloud Run service or the GKE workload, or set GOOGLE_APPLICATION_CREDENTIALS to a key file"
        ))),
        429 | 500.. => Err(TokenError::Unreachable(format!("{what} failed (HTTP {status}): {}", oauth_error(&body)))),
        _ => Err(TokenError::Refused(format!(
            "{what} refused to hand out a token (HTTP {status}: {}): {HOW_TO_AUTHENTICATE}",
            oauth_error(&body)
        ))),
    }
}

/// Sends a token request and reads the start of the answer.
async fn exchange(
    client: &HttpClient,
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<(u16, Vec<u8>), TokenError> {
    let mut response = client.send(request, Reading::Whole).await.map_err(|err| {
        let cause = root_cause(&err);
        if err.is_timeout() {
            TokenError::Unreachable(format!("{what} did not answer within {TOKEN_REQUEST_TIMEOUT:?}"))
        } else if err.is_connect() {
            TokenError::Unreachable(format!("cannot connect to {what}: {cause}"))
        } else {
            TokenError::Unreachable(format!("request to {what} failed: {cause}"))
        }
    })?;
    let status = response.status().as_u16();
    let body = copilot_http::read_capped(&mut response, MAX_TOKEN_RESPONSE_BYTES).await;
    Ok((status, body))
}

/// A token response, as OAuth 2.0 and the metadata server spell it.
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    access_token: Option<String>,
    /// Seconds; a number (some servers send a float).
    #[serde(default)]
    expires_in: Option<f64>,
    #[serde(default)]
    token_type: Option<String>,
}

/// A token as fetched, before it is cached.
struct Fetched {
    token: String,
    lifetime: Duration,
}

/// Reads a 2xx token response. Error messages never quote the body: it may hold a token.
fn parse_token(body: &[u8], what: &str) -> Result<Fetched, TokenError> {
    let malformed = |reason: &str| TokenError::Malformed(format!("{what} answered without a usable token: {reason}"));
    let response: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        // The position only: serde_json's messages for these fields never quote a value.
        malformed(&format!("not a token response (line {}, column {})", e.line(), e.column()))
    })?;
    if let Some(kind) = response.token_type.as_deref()
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(malformed(&format!("token_type is {:?}, not \"Bearer\"", copilot_http::quote(kind, 40, None))));
    }
    let token = response.access_token.filter(|t| !t.is_empty()).ok_or_else(|| malformed("no access_token"))?;
    if token.len() > MAX_ACCESS_TOKEN_BYTES {
        return Err(malformed(&format!("the access_token is {} bytes long", token.len())));
    }
    let lifetime = match response.expires_in {
        None => DEFAULT_TOKEN_LIFETIME,
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            Duration::from_secs_f64(secs.min(MAX_TOKEN_LIFETIME.as_secs_f64()))
        }
        Some(_) => Duration::ZERO,
    };
    Ok(Fetched { token, lifetime })
}

/// `error: error_description` from an OAuth error body (`{"error":"invalid_grant",...}`), else a
/// short excerpt of whatever it was.
fn oauth_error(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct OAuthError {
        #[serde(default)]
        error: Option<serde_json::Value>,
        #[serde(default)]
        error_description: Option<String>,
    }
    let parsed = serde_json::from_slice::<OAuthError>(body).ok();
    let code = parsed.as_ref().and_then(|e| match &e.error {
        Some(serde_json::Value::String(code)) => Some(code.clone()),
        // A Google API error object ({"error": {"message": ...}}).
        Some(serde_json::Value::Object(object)) => object.get("message").and_then(|m| m.as_str()).map(str::to_owned),
        _ => None,
    });
    let description = parsed.and_then(|e| e.error_description);
    let text = match (code, description) {
        (Some(code), Some(description)) => format!("{code}: {description}"),
        (Some(code), None) => code,
        (None, Some(description)) => description,
        (None, None) => crate::wire::fallback_message(body, None),
    };
    let text = copilot_http::quote(text.trim(), 300, None);
    if text.is_empty() { "no details".to_owned() } else { text }
}

/// Form-encodes a value (RFC 3986 unreserved characters kept).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The cache

/// An access token in use.
pub(crate) struct AccessToken {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    /// Replaced from then on.
    refresh_at: Instant,
    /// Not used at all from then on.
    expires_at: Instant,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken").field("token", &"***").field("expires_at", &self.expires_at).finish()
    }
}

impl AccessToken {
    fn new(fetched: Fetched, now: Instant) -> Result<AccessToken, TokenError> {
        let mut header = HeaderValue::from_str(&format!("Bearer {}", fetched.token)).map_err(|_| {
            TokenError::Malformed("the access token holds characters that cannot be sent in an HTTP header".into())
        })?;
        header.set_sensitive(true);
        let margin = REFRESH_MARGIN.min(fetched.lifetime / 2);
        Ok(AccessToken { header, refresh_at: now + fetched.lifetime - margin, expires_at: now + fetched.lifetime })
    }

    fn fresh(&self, now: Instant) -> bool {
        now < self.refresh_at
    }

    fn usable(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

#[derive(Default)]
struct CacheState {
    current: Option<Arc<AccessToken>>,
    /// Fetches finished, successful or not: a caller that waited for the refresh lock knows by it
    /// whether a fetch ended meanwhile.
    fetches: u64,
    /// How the last fetch failed, if it did.
    last_failure: Option<TokenError>,
}

/// The current access token of one [`Source`], shared by every request of a provider (and every
/// thread: the locks are not tied to a runtime).
pub(crate) struct TokenCache {
    source: Source,
    client: HttpClient,
    state: Mutex<CacheState>,
    /// Held while a fetch runs: one at a time.
    refresh: tokio::sync::Mutex<()>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache").field("source", &self.source).finish_non_exhaustive()
    }
}

impl TokenCache {
    pub(crate) fn new(source: Source, client: HttpClient) -> Self {
        TokenCache { source, client, state: Mutex::new(CacheState::default()), refresh: tokio::sync::Mutex::new(()) }
    }

    pub(crate) fn source(&self) -> &Source {
        &self.source
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // The state is consistent after every statement: a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A token to send: the cached one while it is fresh, else a new one.
    pub(crate) async fn get(&self) -> Result<Arc<AccessToken>, TokenError> {
        let seen = {
            let state = self.state();
            if let Some(token) = state.current.as_ref().filter(|t| t.fresh(Instant::now())) {
                return Ok(token.clone());
            }
            state.fetches
        };
        let _refreshing = self.refresh.lock().await;
        {
            let state = self.state();
            let now = Instant::now();
            if let Some(token) = state.current.as_ref().filter(|t| t.fresh(now)) {
                return Ok(token.clone());
            }
            // A fetch ended while this caller waited: its outcome is this caller's too.
            if state.fetches != seen
                && let Some(failure) = &state.last_failure
            {
                return match state.current.as_ref().filter(|t| t.usable(now)) {
                    Some(token) => Ok(token.clone()),
                    None => Err(failure.clone()),
                };
            }
        }
        match self.fetch().await {
            Ok(token) => Ok(token),
            Err(err) => {
                // A token near its end still works: better than failing the call.
                let state = self.state();
                match state.current.as_ref().filter(|t| t.usable(Instant::now())) {
                    Some(token) => {
                        tracing::warn!(source = ?self.source, error = %err, "cannot refresh the Google access token; using the current one until it expires");
                        Ok(token.clone())
                    }
                    None => Err(err),
                }
            }
        }
    }

    /// A token to use instead of `rejected`, which Vertex refused: a new one, unless another
    /// caller already replaced it.
    pub(crate) async fn replace(&self, rejected: &Arc<AccessToken>) -> Result<Arc<AccessToken>, TokenError> {
        let _refreshing = self.refresh.lock().await;
        {
            let mut state = self.state();
            match &state.current {
                Some(current) if !Arc::ptr_eq(current, rejected) && current.fresh(Instant::now()) => {
                    return Ok(current.clone());
                }
                Some(current) if Arc::ptr_eq(current, rejected) => state.current = None,
                _ => {}
            }
        }
        self.fetch().await
    }

    /// Fetches a token and records the outcome; the caller holds the refresh lock.
    async fn fetch(&self) -> Result<Arc<AccessToken>, TokenError> {
        let outcome = match self.source.fetch(&self.client).await {
            Ok(fetched) => AccessToken::new(fetched, Instant::now()).map(Arc::new),
            Err(err) => Err(err),
        };
        let mut state = self.state();
        state.fetches += 1;
        match &outcome {
            Ok(token) => {
                tracing::debug!(source = ?self.source, lifetime = ?token.expires_at.saturating_duration_since(Instant::now()), "fetched a Google access token");
                state.current = Some(token.clone());
                state.last_failure = None;
            }
            Err(err) => {
                tracing::debug!(source = ?self.source, error = %err, "cannot fetch a Google access token");
                state.last_failure = Some(err.clone());
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses_are_bounded_and_checked() {
        let ok = parse_token(br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#, "x").unwrap();
        assert_eq!(ok.token, "ya29.abc");
        assert_eq!(ok.lifetime, Duration::from_secs(3599));
        let lifetime = |body: &str| parse_token(body.as_bytes(), "x").unwrap().lifetime;
        assert_eq!(lifetime(r#"{"access_token":"t","expires_in":1e300}"#), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime(r#"{"access_token":"t","expires_in":18446744073709551615}"#), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime(r#"{"access_token":"t","expires_in":-5}"#), Duration::ZERO);
        assert_eq!(lifetime(r#"{"access_token":"t"}"#), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":2.5,"token_type":"bearer"}"#),
            Duration::from_millis(2500)
        );

        for bad in [
            r#"{"access_token":"","expires_in":1}"#,
            r#"{"expires_in":1}"#,
            r#"{"access_token":"secret-token-1","token_type":"MAC"}"#,
            r#"{"access_token":"secret-token-1","expires_in":"soon"}"#,
            "not json secret-token-1",
        ] {
            let err = parse_token(bad.as_bytes(), "the endpoint").err().unwrap();
            assert!(matches!(err, TokenError::Malformed(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("secret-token-1"), "{err}");
        }
        let long = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(MAX_ACCESS_TOKEN_BYTES + 1));
        assert!(parse_token(long.as_bytes(), "x").is_err());
    }

    #[test]
    fn tokens_are_refreshed_a_minute_early_or_at_half_life() {
        let now = Instant::now();
        let token = |secs| AccessToken::new(Fetched { token: "t".into(), lifetime: Duration::from_secs(secs) }, now);
        let hour = token(3600).unwrap();
        assert!(hour.fresh(now + Duration::from_secs(3539)));
        assert!(!hour.fresh(now + Duration::from_secs(3540)));
        assert!(hour.usable(now + Duration::from_secs(3599)));
        let short = token(10).unwrap();
        assert!(short.fresh(now + Duration::from_secs(4)));
        assert!(!short.fresh(now + Duration::from_secs(5)));
        let none = token(0).unwrap();
        assert!(!none.fresh(now) && !none.usable(now));
        let bad = AccessToken::new(Fetched { token: "a\nb".into(), lifetime: Duration::from_secs(1) }, now);
        assert!(matches!(bad, Err(TokenError::Malformed(_))));
        assert!(!format!("{hour:?}").contains("Bearer"), "{hour:?}");
    }

    #[test]
    fn oauth_errors_are_summarized() {
        assert_eq!(
            oauth_error(br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#),
            "invalid_grant: Invalid JWT Signature."
        );
        assert_eq!(oauth_error(br#"{"error":{"code":403,"message":"denied"}}"#), "denied");
        assert_eq!(oauth_error(b"<html><title>Bad</title></html>"), "Bad");
        assert_eq!(oauth_error(b""), "no details");
        assert_eq!(percent_encode(JWT_BEARER_GRANT), "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer");
    }

    #[test]
    fn application_default_credentials_resolve_in_order() {
        let dir = std::env::temp_dir().join(format!("copilot-gemini-adc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };

        // Nothing set: the metadata server, by its name or GCE_METADATA_HOST.
        let source = Source::resolve(&GoogleCredentials::ApplicationDefault, env(&[])).unwrap();
        assert!(
            matches!(&source, Source::Metadata { url, .. } if url.as_str() == "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform"),
            "{source:?}"
        );
        let source =
            Source::resolve(&GoogleCredentials::ApplicationDefault, env(&[("GCE_METADATA_HOST", "127.0.0.1:8089")]))
                .unwrap();
        assert!(matches!(&source, Source::Metadata { host, .. } if host == "127.0.0.1:8089"), "{source:?}");
        for bad in ["http://x", "a/b", "a b"] {
            let err = Source::metadata(bad).unwrap_err();
            assert!(err.to_string().contains("GCE_METADATA_HOST"), "{err}");
        }

        // A file that GOOGLE_APPLICATION_CREDENTIALS names must be there: no fallback.
        let err = Source::resolve(
            &GoogleCredentials::ApplicationDefault,
            env(&[("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")]),
        )
        .unwrap_err();
        assert!(
            matches!(&err, CredentialsError::Unreadable { path, .. } if path == Path::new("/nonexistent/key.json"))
        );

        // Unusable files say why, never what they hold.
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cases = [
            (
                "user.json",
                r#"{"type":"authorized_user","client_secret":"hush-123","refresh_token":"hush-456"}"#,
                "authorized_user",
            ),
            ("nokey.json", r#"{"type":"service_account","client_email":"a@b"}"#, "no private_key"),
            (
                "badkey.json",
                r#"{"client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nhush-789\n-----END PRIVATE KEY-----\n"}"#,
                "private_key",
            ),
            ("garbage.json", "hush-000 not json", "not a credentials JSON file"),
        ];
        for (name, text, expected) in cases {
            let path = write(name, text);
            let err = Source::resolve(&GoogleCredentials::ServiceAccountFile(path), env(&[])).unwrap_err();
            let message = err.to_string();
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains("hush"), "{message}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
