//! Tools and structured output on the embedded engine's real default model (issue 16): filled in by
//! the embedded engine's work on tool calling and grammar-constrained JSON.
