//! Checks on a call's request headers, before any of its body is read (an `admission.rs` layer).
//!
//! **Size** (`limits.max_metadata_bytes`): a call whose header block is larger gets
//! RESOURCE_EXHAUSTED naming the limit and its largest header, on its own stream, and the
//! connection lives on.
//!
//! The HTTP/2 layer has a limit of its own (SETTINGS_MAX_HEADER_LIST_SIZE), but what it does past
//! it is no answer a gRPC client can read: h2 replies HTTP 431 without a grpc-status (clients see
//! UNKNOWN), and past four times the limit sends GOAWAY, which fails every call sharing the
//! connection — in a mesh, other clients' calls. So the HTTP/2 limit is set well above this one
//! ([`http2_header_list_limit`]) and this layer answers first; only header blocks beyond that
//! ceiling, which no gRPC client sends, still meet h2's own answers.
//!
//! **Encoding**: this server reads uncompressed messages only; a call naming another
//! `grpc-encoding` gets UNIMPLEMENTED with `grpc-accept-encoding: identity` (the gRPC compression
//! spec) and an `ErrorInfo`, where tonic would answer without one.

use http::Request;

use crate::admission::{Admission, Admit};
use crate::error::GatewayError;

/// The HTTP/2 layer's header list limit for a metadata limit: four times it, at least 1 MiB, so
/// that what this layer refuses reaches it. h2 holds one header block at a time per connection
/// while decoding it, and drops a refused call's headers as soon as its status is sent.
pub fn http2_header_list_limit(max_metadata_bytes: usize) -> u32 {
    u32::try_from(max_metadata_bytes.saturating_mul(4).max(1024 * 1024)).unwrap_or(u32::MAX)
}

/// The size of a request's header block as HTTP/2 counts it (RFC 9113 §6.5.2): each field's name
/// and value plus 32 bytes, pseudo-headers included; and its largest field, with that field's size.
pub fn header_list_size<B>(request: &Request<B>) -> (usize, Option<(&str, usize)>) {
    const FIELD_OVERHEAD: usize = 32;
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str().len()),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (":authority", uri.authority().map_or(0, |a| a.as_str().len())),
        (":path", uri.path_and_query().map_or(0, |p| p.as_str().len())),
    ];
    let mut total: usize = pseudo.iter().map(|(name, len)| name.len() + len + FIELD_OVERHEAD).sum();
    let mut largest: Option<(&str, usize)> = None;
    for (name, value) in request.headers() {
        let size = name.as_str().len() + value.len() + FIELD_OVERHEAD;
        total += size;
        if largest.is_none_or(|(_, most)| size > most) {
            largest = Some((name.as_str(), size));
        }
    }
    (total, largest)
}

/// The checks as a layer: `AdmissionLayer::new(HeaderChecks { max_metadata_bytes })`.
#[derive(Clone)]
pub struct HeaderChecks {
    pub max_metadata_bytes: usize,
}

impl Admission for HeaderChecks {
    fn admit<B>(&self, request: &mut Request<B>) -> Admit {
        self.check(request).into()
    }
}

impl HeaderChecks {
    fn check<B>(&self, request: &Request<B>) -> Result<(), GatewayError> {
        let (size, largest) = header_list_size(request);
        if size > self.max_metadata_bytes {
            return Err(GatewayError::MetadataTooLarge {
                size,
                limit: self.max_metadata_bytes,
                largest: largest.map(|(name, size)| (name.to_string(), size)),
            });
        }
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding != "identity"
        {
            return Err(GatewayError::EncodingUnsupported {
                encoding: String::from_utf8_lossy(encoding.as_bytes()).into_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_what_http2_counts() {
        let request = Request::post("http://localhost:50051/copilot.v1.Copilot/Generate")
            .header("content-type", "application/grpc")
            .header("x-big", "v".repeat(1000))
            .body(())
            .unwrap();
        let pseudo = (7 + 4 + 32) + (7 + 4 + 32) + (10 + 15 + 32) + (5 + 28 + 32);
        let fields = (12 + 16 + 32) + (5 + 1000 + 32);
        assert_eq!(header_list_size(&request), (pseudo + fields, Some(("x-big", 1037))));
    }

    #[test]
    fn the_http2_limit_leaves_room_above_the_metadata_limit() {
        assert_eq!(http2_header_list_limit(16 * 1024), 1024 * 1024);
        assert_eq!(http2_header_list_limit(1024 * 1024), 4 * 1024 * 1024);
        assert_eq!(http2_header_list_limit(usize::MAX), u32::MAX);
    }
}
