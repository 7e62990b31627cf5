//! The end of a successful completion, as the gateway hands it to the handlers and to telemetry
//! (its own module, so that the gateway and `telemetry::observe` do not import each other).

use std::time::Duration;

use copilot_provider::Completion;

/// The end of a successful completion: what the upstream reported, plus what the gateway measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The model that answered, in routable `provider/model` form.
    pub model: String,
    pub completion: Completion,
    pub time_to_first_token: Option<Duration>,
    pub total_duration: Duration,
    pub output_tokens_per_second: f64,
}
