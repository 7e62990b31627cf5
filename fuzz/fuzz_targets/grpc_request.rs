//! The gRPC request path: arbitrary bytes as one call of the Copilot API (the method, the framing
//! and the caller chosen by the first byte), through the server's own service stack in-process,
//! under the checks of `tests/request_path/check.rs` (no panic or hang, a grpc-status, never
//! INTERNAL or UNKNOWN, an ErrorInfo in the `copilot.v1` domain on every error, a bounded message).
//! The root package's `request_path` test replays the seeds under the same checks.
#![no_main]

// Dead code here is what only the test uses (writing seeds); that build warns of the rest.
#[allow(dead_code)]
#[path = "../../tests/request_path/check.rs"]
mod check;

use libfuzzer_sys::fuzz_target;

thread_local! {
    // Built once (libFuzzer runs the inputs one after another on this thread): the runtime, the
    // providers and the service stack serve every input.
    static PATH: check::RequestPath = check::RequestPath::new();
}

fuzz_target!(|input: &[u8]| {
    PATH.with(|path| path.check(input));
});
