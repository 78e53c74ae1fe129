//! Helpers shared by the end-to-end tests in `tests/tests/`.
#![forbid(unsafe_code)]
pub mod image;
pub mod peers;
pub mod daemon;
pub mod engine;
pub mod engine_env;
