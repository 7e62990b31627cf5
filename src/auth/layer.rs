//! The check in front of the routes (an `admission.rs` layer): identifies the caller by API key,
//! applies the key's request and token budgets, and hands the key to the handlers in the
//! request's extensions.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use http::Request;

use super::{Auth, Caller, DeferredAdmission};
use crate::admission::{Admission, Admit};
use crate::error::GatewayError;
use crate::telemetry::rpc_trace::API_PREFIX;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
const REFLECTION_PREFIX: &str = "/grpc.reflection.";
/// The span attribute naming the key a call came with (the rpc span of `telemetry/rpc_trace.rs`).
pub const KEY_NAME_ATTRIBUTE: &str = "copilot.api_key.name";

/// API keys as a layer (`AdmissionLayer::new(AuthCheck(Auth::from_config(..)))`); with auth off
/// it is a pass-through that costs one branch.
#[derive(Clone)]
pub struct AuthCheck(pub Option<Arc<Auth>>);

impl Admission for AuthCheck {
    fn admit<B>(&self, request: &mut Request<B>) -> Admit {
        match &self.0 {
            Some(auth) => auth.admit(request),
            None => Admit::Now(Ok(())),
        }
    }
}

impl Auth {
    /// Lets the call through, with its caller attached, or says why not. With shared budgets the
    /// key is identified now and its budget checked in Redis, later — or, for a call whose handler
    /// reserves tokens (`Generate`, `Chat`, `Embed` of a key with a token budget), together with
    /// that reservation, in one round trip (`DeferredAdmission`).
    fn admit<B>(&self, request: &mut Request<B>) -> Admit {
        match self.identify_and_admit(request) {
            Ok(Some(later)) => Admit::Later(later),
            Ok(None) => Admit::Now(Ok(())),
            Err(error) => Admit::Now(Err(error)),
        }
    }

    fn identify_and_admit<B>(
        &self,
        request: &mut Request<B>,
    ) -> Result<Option<BoxFuture<'static, Result<(), GatewayError>>>, GatewayError> {
        let path = request.uri().path();
        // Only completions spend tokens (Embed settles its own in the handler; CountTokens generates
        // nothing and spends none); every call of the API spends a request.
        let method = path.strip_prefix(API_PREFIX);
        let api_call = method.map(|method| matches!(method, "Generate" | "Chat"));
        let reserves = method.is_some_and(|method| matches!(method, "Generate" | "Chat" | "Embed"));
        if api_call.is_none()
            && ((self.open_health && path.starts_with(HEALTH_PREFIX))
                || (self.open_reflection && path.starts_with(REFLECTION_PREFIX)))
        {
            return Ok(None);
        }
        let key = self.identify(request.headers().get(http::header::AUTHORIZATION))?.clone();
        tracing::Span::current().record(KEY_NAME_ATTRIBUTE, key.name.as_str());
        let mut caller = Caller { key: key.clone(), shared: self.shared.clone(), deferred: None };
        let admission = match (api_call, &self.shared) {
            (None, _) => Ok(None),
            (Some(uses_tokens), Some(shared)) if reserves && key.has_token_budget() => {
                caller.deferred = Some(DeferredAdmission::new(key, shared.clone(), uses_tokens));
                Ok(None)
            }
            (Some(uses_tokens), Some(shared)) if key.has_limits() => {
                let shared = shared.clone();
                Ok(Some(Box::pin(async move { shared.admit(&key, uses_tokens).await }) as BoxFuture<'static, _>))
            }
            (Some(uses_tokens), _) => key.admit(uses_tokens, Instant::now()).map(|()| None),
        };
        request.extensions_mut().insert(caller);
        admission
    }
}
