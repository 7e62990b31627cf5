//! The commands of the `copilot` binary besides `serve` (which `main.rs` runs): each parses its
//! own arguments and returns the process's exit code.

pub mod doctor;
pub mod health;
pub mod keys;
pub mod models;
