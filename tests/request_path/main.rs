//! The gRPC request path under the checks of the `grpc_request` fuzz target (`check.rs`, shared
//! with it): its seeds, and any input kept from a fuzzing run, replayed on every test run, so a
//! change that broke one of the API's promises about errors (an undecodable request answered
//! INTERNAL, an error without ErrorInfo, …) fails here without running the fuzzer.

mod check;
mod seeds;

use std::collections::BTreeMap;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use check::{Answer, BodyShape, Call, Caller, Framing, Method, RequestPath, check_status};
use copilot::error::ERROR_DOMAIN;
use seeds::seeds;

fn seeds_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/grpc_request")
}

/// `scripts/test` replays the fuzz target's seeds (and any input kept from a fuzzing run) under
/// the target's own checks.
#[test]
fn every_seed_keeps_the_promises() {
    let path = RequestPath::new();
    let mut replayed = 0;
    for entry in std::fs::read_dir(seeds_dir()).expect("fuzz/seeds/grpc_request") {
        let file = entry.unwrap().path();
        let input = std::fs::read(&file).unwrap();
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| path.check(&input)));
        assert!(answer.is_ok(), "{} broke a promise (see the panic above)", file.display());
        replayed += 1;
    }
    assert!(replayed >= seeds().len(), "only {replayed} seeds in {}", seeds_dir().display());
}

/// The committed seeds are what `seeds()` makes; `UPDATE_SEEDS=1` writes them.
#[test]
fn the_seed_files_are_the_generated_seeds() {
    for (name, input) in seeds() {
        if std::env::var_os("UPDATE_SEEDS").is_some() {
            std::fs::create_dir_all(seeds_dir()).unwrap();
            std::fs::write(seeds_dir().join(name), &input).unwrap();
        }
        let on_disk = std::fs::read(seeds_dir().join(name)).unwrap_or_default();
        assert!(on_disk == input, "fuzz/seeds/grpc_request/{name} is missing or out of date");
    }
}

/// The seeds reach what they are named for, so the replay covers each layer of the path.
#[test]
fn the_seeds_reach_each_layer() {
    let path = RequestPath::new();
    let seeds: BTreeMap<_, _> = seeds().into_iter().collect();
    let answer = |name: &str| path.check(&seeds[name]);
    let refused = |code, reason: &str| Answer { code, reason: Some(reason.into()), messages: 0 };
    assert_eq!(answer("generate.bin"), Answer { code: Code::Ok, reason: None, messages: 1 });
    // A delta, then the summary.
    assert_eq!(answer("chat.bin").messages, 2);
    assert_eq!(answer("split-frame.bin").code, Code::Ok);
    assert_eq!(answer("declared-length-exact.bin").code, Code::Ok);
    assert_eq!(answer("keyed-chat-alias.bin").code, Code::Ok);
    assert_eq!(answer("list-models.bin").messages, 1);
    for malformed in ["prompt-invalid-utf8.bin", "truncated-varint.bin", "field-zero.bin", "nested-groups.bin"] {
        assert_eq!(answer(malformed), refused(Code::InvalidArgument, "MALFORMED_REQUEST"), "{malformed}");
    }
    assert_eq!(answer("temperature-nan.bin").code, Code::InvalidArgument);
    assert_eq!(answer("chat-role-out-of-range.bin").code, Code::InvalidArgument);
    assert_eq!(answer("generate-model-name-10kb.bin").code, Code::InvalidArgument);
    assert_eq!(answer("declared-length-past-the-limit.bin").code, Code::ResourceExhausted);
    assert_eq!(answer("generate-provider-down.bin").code, Code::Unavailable);
    assert_eq!(answer("keyed-model-not-allowed.bin").code, Code::PermissionDenied);
    assert_eq!(answer("no-key.bin").code, Code::Unauthenticated);
    assert_eq!(answer("unknown-key.bin").code, Code::Unauthenticated);
    assert_eq!(answer("declared-length-short-of-the-message.bin"), refused(Code::Internal, "MALFORMED_REQUEST"));
}

/// What the fuzzer found, answered INTERNAL without ErrorInfo by tonic (a body that ends inside a
/// frame, or holds no whole message) or silently half-read (two messages for a unary method), is
/// the caller's error.
#[test]
fn bodies_that_are_not_one_whole_message_are_the_callers_error() {
    let path = RequestPath::new();
    let seeds: BTreeMap<_, _> = seeds().into_iter().collect();
    let refused = Answer { code: Code::InvalidArgument, reason: Some("MALFORMED_REQUEST".into()), messages: 0 };
    for name in [
        "found-message-cut-short.bin",
        "found-declared-length-past-the-body.bin",
        "found-header-cut-short.bin",
        "found-empty-body.bin",
        "found-header-without-its-message.bin",
        "found-two-messages.bin",
    ] {
        assert_eq!(path.check(&seeds[name]), refused, "{name}");
    }
}

/// The check refuses what the fuzzer looks for: a request answered INTERNAL (as prost's own
/// codec answers an undecodable message), an error without ErrorInfo, an over-long message; and
/// accepts the compression spec's INTERNAL only for a body with a flagged frame.
#[test]
fn the_check_refuses_broken_promises() {
    let whole = BodyShape { frames: 1, ..BodyShape::default() };
    let check_status = |status: &Status, messages| check_status(status, messages, whole);
    let with_info = |status: Status| {
        let details = tonic_types::ErrorDetails::with_error_info("SOME_REASON", ERROR_DOMAIN, []);
        Status::with_error_details(status.code(), status.message(), details)
    };
    assert!(check_status(&Status::internal("failed to decode Protobuf message"), 0).is_err());
    assert!(check_status(&with_info(Status::internal("x")), 0).is_err());
    assert!(check_status(&with_info(Status::unknown("x")), 0).is_err());
    assert!(check_status(&Status::invalid_argument("x"), 0).is_err());
    assert!(check_status(&with_info(Status::invalid_argument("é".repeat(513))), 0).is_err());
    assert!(check_status(&Status::ok(""), 0).is_err());
    assert!(check_status(&with_info(Status::invalid_argument("é".repeat(512))), 0).is_ok());
    let other_domain = tonic_types::ErrorDetails::with_error_info("SOME_REASON", "example.com", []);
    assert!(check_status(&Status::with_error_details(Code::InvalidArgument, "x", other_domain), 0).is_err());

    let malformed = |status: Status| {
        let details = tonic_types::ErrorDetails::with_error_info("MALFORMED_REQUEST", ERROR_DOMAIN, []);
        Status::with_error_details(status.code(), status.message(), details)
    };
    let flagged = BodyShape { flagged: true, ..BodyShape::default() };
    assert!(check::check_status(&malformed(Status::internal("compressed")), 0, flagged).is_ok());
    assert!(check::check_status(&malformed(Status::internal("compressed")), 0, whole).is_err());
    assert!(check::check_status(&Status::internal("compressed"), 0, flagged).is_err());

    // tonic's own answers to a body cut short or without a message.
    let cut_short = BodyShape { cut_short: true, ..BodyShape::default() };
    assert!(check::check_status(&Status::internal("Unexpected EOF decoding stream."), 0, cut_short).is_err());
    assert!(check::check_status(&Status::internal("Missing request message."), 0, BodyShape::default()).is_err());
}

#[test]
fn an_input_reads_back_as_the_call_it_describes() {
    for method in Method::ALL {
        for framing in Framing::ALL {
            for caller in Caller::ALL {
                let call = Call { method, framing, caller, payload: vec![1, 2, 3] };
                assert_eq!(Call::from_input(&call.to_input()), call);
            }
        }
    }
    assert_eq!(Call::from_input(&[]), Call::from_input(&[0]));
}
