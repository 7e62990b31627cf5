//! A fake of Google's credential services, for Vertex AI tests: the OAuth 2.0 token endpoint
//! service-account keys exchange their JWTs at, and the metadata server of Cloud Run, GKE and
//! Compute Engine. One loopback server plays both:
//!
//! - `POST /token` (the key file's `token_uri`, [`FakeGoogleAuth::token_uri`]) takes the form
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>` and checks the JWT
//!   the way Google does: an RS256 signature by the fake service account's key
//!   ([`TEST_PRIVATE_KEY_PEM`]), `iss` the account's email, `aud` the token URI, a `scope` with
//!   `cloud-platform`, an `exp` in the future at most an hour after `iat`. It answers
//!   `{"access_token", "expires_in", "token_type": "Bearer"}`, or Google's OAuth errors: 400
//!   `{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}` and the like.
//! - `GET /computeMetadata/v1/instance/service-accounts/default/token` (point
//!   `GCE_METADATA_HOST` at [`FakeGoogleAuth::metadata_host`]) requires `Metadata-Flavor: Google`
//!   (403 without it, as the real server answers) and hands out a token in the same JSON.
//!
//! Every token it issues is remembered with its expiry, so a fake API
//! ([`FakeGemini::require_vertex_auth`](crate::FakeGemini::require_vertex_auth)) accepts only
//! tokens that are real and current; [`FakeGoogleAuth::revoke_all`] makes the ones already issued
//! invalid, as a rotated key or a revoked grant does.
//!
//! The keys here are test-only keys generated for this repository (see `testdata/README.md`);
//! they belong to no Google account.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ring::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::format::form_value;
use crate::harness::{Harness, LOOPBACK, Server};

/// The fake service account's email (the JWT's `iss`).
pub const TEST_SERVICE_ACCOUNT: &str = "copilot-test@copilot-fake-project.iam.gserviceaccount.com";

/// The fake service account's key id (the JWT header's `kid`).
pub const TEST_KEY_ID: &str = "f4ke0000000000000000000000000000000000aa";

/// TEST ONLY: the fake service account's private key (RSA-2048, PKCS#8 PEM), generated for this
/// repository's tests. It grants nothing anywhere else.
pub const TEST_PRIVATE_KEY_PEM: &str = include_str!("../testdata/test-only-service-account-key.pem");

/// TEST ONLY: an RSA key the fake does not know: assertions signed with it are refused with
/// `invalid_grant` / `Invalid JWT Signature.`, as Google refuses a deleted key.
pub const UNKNOWN_PRIVATE_KEY_PEM: &str = include_str!("../testdata/test-only-unknown-key.pem");

/// The scope Vertex AI needs; an assertion must ask for it.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Google's wording for an assertion whose times are off.
const BAD_TIMES: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.";

/// What Google's token endpoint answers by default (3599 s: an hour minus the second it took).
const DEFAULT_EXPIRES_IN: u64 = 3599;

/// A running fake of Google's token endpoint and metadata server. It stops when dropped.
pub struct FakeGoogleAuth {
    server: Server,
    shared: Arc<AuthShared>,
}

/// Whether a fake API should accept a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    Valid,
    Expired,
    Unknown,
}

/// The tokens a [`FakeGoogleAuth`] issued, shared with the fake APIs that check them.
#[derive(Default)]
pub(crate) struct IssuedTokens {
    tokens: Mutex<HashMap<String, Instant>>,
    next: AtomicU64,
}

impl IssuedTokens {
    fn issue(&self, lifetime: Duration, prefix: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let token = format!("ya29.{prefix}-fake-{n:04}-{nanos:08x}");
        self.tokens.lock().unwrap().insert(token.clone(), Instant::now() + lifetime);
        token
    }

    pub(crate) fn check(&self, token: &str) -> TokenCheck {
        match self.tokens.lock().unwrap().get(token) {
            None => TokenCheck::Unknown,
            Some(expiry) if Instant::now() >= *expiry => TokenCheck::Expired,
            Some(_) => TokenCheck::Valid,
        }
    }
}

struct AuthShared {
    /// `http://IP:PORT/token`, the `aud` an assertion must name; set once the port is known.
    token_uri: OnceLock<String>,
    /// The fake account's public key (DER `RSAPublicKey`), what signatures are checked with.
    public_key: Vec<u8>,
    expires_in: AtomicU64,
    /// While set, every grant is refused with `invalid_grant` and this description.
    refusal: Mutex<Option<String>>,
    token_requests: AtomicUsize,
    metadata_requests: AtomicUsize,
    /// The claims of every assertion that passed its checks, in order.
    claims: Mutex<Vec<Value>>,
    /// The `scopes` query of every metadata token request.
    metadata_scopes: Mutex<Vec<Option<String>>>,
    issued: Arc<IssuedTokens>,
}

impl FakeGoogleAuth {
    /// Starts the fake on `127.0.0.1` and a free port.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start() -> FakeGoogleAuth {
        FakeGoogleAuth::start_on(LOOPBACK).await.expect("bind a loopback port for the fake Google auth server")
    }

    /// Starts the fake on `addr` (port 0 picks a free port).
    pub async fn start_on(addr: SocketAddr) -> io::Result<FakeGoogleAuth> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(TEST_PRIVATE_KEY_PEM.as_bytes()).expect("the test key is PEM");
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("the test key is an RSA key");
        let shared = Arc::new(AuthShared {
            token_uri: OnceLock::new(),
            public_key: key.public_key().as_ref().to_vec(),
            expires_in: AtomicU64::new(DEFAULT_EXPIRES_IN),
            refusal: Mutex::new(None),
            token_requests: AtomicUsize::new(0),
            metadata_requests: AtomicUsize::new(0),
            claims: Mutex::new(Vec::new()),
            metadata_scopes: Mutex::new(Vec::new()),
            issued: Arc::new(IssuedTokens::default()),
        });
        let server = Server::start(addr, "Google auth", Harness::new(), router(shared.clone())).await?;
        let _ = shared.token_uri.set(format!("http://{}/token", server.addr()));
        Ok(FakeGoogleAuth { server, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The token endpoint, for a key file's `token_uri`.
    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr())
    }

    /// `IP:PORT`, for `GCE_METADATA_HOST`.
    pub fn metadata_host(&self) -> String {
        self.addr().to_string()
    }

    /// A service-account key file (the JSON Google Cloud's console downloads) for the fake
    /// account, signed by `private_key_pem`, with `token_uri` pointing here and, when given,
    /// `quota_project_id`.
    pub fn service_account_json(&self, private_key_pem: &str, quota_project: Option<&str>) -> String {
        let mut key = json!({
            "type": "service_account",
            "project_id": "copilot-fake-project",
            "private_key_id": TEST_KEY_ID,
            "private_key": private_key_pem,
            "client_email": TEST_SERVICE_ACCOUNT,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/copilot-test%40copilot-fake-project.iam.gserviceaccount.com",
            "universe_domain": "googleapis.com",
        });
        if let Some(project) = quota_project {
            key["quota_project_id"] = project.into();
        }
        serde_json::to_string_pretty(&key).expect("serializing a JSON value cannot fail")
    }

    /// The `expires_in` of the tokens issued from now on (default 3599), which is also how long
    /// the fake APIs accept them.
    pub fn set_expires_in(&self, seconds: u64) {
        self.shared.expires_in.store(seconds, Ordering::Relaxed);
    }

    /// While `Some`, every grant is refused: 400 `{"error": "invalid_grant", "error_description":
    /// <description>}` (a disabled key, a deleted account). `None` restores normal service.
    pub fn refuse_grants(&self, description: Option<&str>) {
        *self.shared.refusal.lock().unwrap() = description.map(str::to_owned);
    }

    /// Every token issued so far stops being accepted.
    pub fn revoke_all(&self) {
        self.shared.issued.tokens.lock().unwrap().clear();
    }

    /// `POST /token` requests received, refused ones included.
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// Metadata token requests received, refused ones included.
    pub fn metadata_requests(&self) -> usize {
        self.shared.metadata_requests.load(Ordering::SeqCst)
    }

    /// The claims of every assertion that passed the checks, in order.
    pub fn assertion_claims(&self) -> Vec<Value> {
        self.shared.claims.lock().unwrap().clone()
    }

    /// The `scopes` query parameter of every metadata token request, in order.
    pub fn metadata_scopes(&self) -> Vec<Option<String>> {
        self.shared.metadata_scopes.lock().unwrap().clone()
    }

    /// Whether `token` was issued here, is not revoked and has not expired.
    pub fn is_valid(&self, token: &str) -> bool {
        self.shared.issued.check(token) == TokenCheck::Valid
    }

    pub(crate) fn issued(&self) -> Arc<IssuedTokens> {
        self.shared.issued.clone()
    }
}

fn router(shared: Arc<AuthShared>) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/computeMetadata/v1/instance/service-accounts/default/token", get(metadata_token))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found") })
        .layer(DefaultBodyLimit::max(64 << 10))
        .with_state(shared)
}

/// A token response, pretty-printed like Google's.
fn token_response(token: &str, expires_in: u64) -> Response {
    let body = json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"});
    let body = serde_json::to_vec_pretty(&body).expect("serializing a JSON value cannot fail");
    (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"))], body)
        .into_response()
}

/// An OAuth 2.0 error: `{"error": code, "error_description": description}`.
fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    let body = json!({"error": code, "error_description": description});
    let body = serde_json::to_vec_pretty(&body).expect("serializing a JSON value cannot fail");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"))], body)
        .into_response()
}

async fn token(State(shared): State<Arc<AuthShared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let form_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Invalid Content-Type.");
    }
    let form = String::from_utf8_lossy(&body);
    match form_value(&form, "grant_type").as_deref() {
        Some(JWT_BEARER_GRANT) => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Invalid grant_type: {other}"),
            );
        }
        None => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Invalid grant_type: "),
    }
    let Some(assertion) = form_value(&form, "assertion") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing required parameter: assertion");
    };
    if let Some(description) = shared.refusal.lock().unwrap().clone() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &description);
    }
    let claims = match verify(&shared, &assertion) {
        Ok(claims) => claims,
        Err(refusal) => return *refusal,
    };
    shared.claims.lock().unwrap().push(claims);
    let expires_in = shared.expires_in.load(Ordering::Relaxed);
    let token = shared.issued.issue(Duration::from_secs(expires_in), "c");
    token_response(&token, expires_in)
}

/// Checks an assertion as Google does; `Ok` holds its claims, `Err` the refusal.
fn verify(shared: &AuthShared, assertion: &str) -> Result<Value, Box<Response>> {
    let invalid = |description: &str| Box::new(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description));
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header_part, claims_part, signature_part] = parts[..] else {
        return Err(invalid("Invalid JWT: a JWT has three parts."));
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok();
    let json = |part: &str| decode(part).and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let (Some(jwt_header), Some(claims), Some(signature)) =
        (json(header_part), json(claims_part), decode(signature_part))
    else {
        return Err(invalid("Invalid JWT: cannot decode it."));
    };
    if jwt_header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(invalid("Invalid JWT: the algorithm must be RS256."));
    }
    if jwt_header.get("kid").and_then(Value::as_str).is_some_and(|kid| kid != TEST_KEY_ID) {
        return Err(invalid("Invalid JWT Signature."));
    }
    let signed = &assertion[..header_part.len() + 1 + claims_part.len()];
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &shared.public_key)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| invalid("Invalid JWT Signature."))?;
    if claims.get("iss").and_then(Value::as_str) != Some(TEST_SERVICE_ACCOUNT) {
        return Err(invalid("Invalid grant: account not found"));
    }
    let token_uri = shared.token_uri.get().map(String::as_str).unwrap_or_default();
    if claims.get("aud").and_then(Value::as_str) != Some(token_uri) {
        return Err(invalid(&format!("Invalid JWT: Failed audience check. The expected audience is {token_uri}.")));
    }
    let scopes = claims.get("scope").and_then(Value::as_str).unwrap_or_default();
    if !scopes.split(' ').any(|s| s == CLOUD_PLATFORM_SCOPE) {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        )));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (Some(iat), Some(exp)) = (claims.get("iat").and_then(Value::as_i64), claims.get("exp").and_then(Value::as_i64))
    else {
        return Err(invalid(BAD_TIMES));
    };
    if exp <= now || iat > now + 300 || exp < iat || exp - iat > 3600 {
        return Err(invalid(BAD_TIMES));
    }
    Ok(claims)
}

async fn metadata_token(State(shared): State<Arc<AuthShared>>, headers: HeaderMap, uri: Uri) -> Response {
    shared.metadata_requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("metadata-flavor").map(HeaderValue::as_bytes) != Some(b"Google") {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Missing required header: Metadata-Flavor: Google\n",
        )
            .into_response();
    }
    shared.metadata_scopes.lock().unwrap().push(uri.query().and_then(|q| form_value(q, "scopes")));
    let expires_in = shared.expires_in.load(Ordering::Relaxed);
    let token = shared.issued.issue(Duration::from_secs(expires_in), "m");
    let body = json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}).to_string();
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    response.headers_mut().insert("metadata-flavor", HeaderValue::from_static("Google"));
    response
}
