//! # stratad
//!
//! A Docker-compatible engine built on the Strata snapshotter.
//!
//! # Layout
//! - [`api`]: routing and Docker's JSON types, the only place that knows the
//!   wire format; [`api::images`] holds the image routes.
//! - [`state`]: [`state::Engine`], the configuration and services every
//!   handler reaches.
//! - [`images`]: the image service (store, layers, import/load/save).
//! - [`registry`]: pull and push over the Docker Registry HTTP API v2.
//! - [`containers`]: the container service (runc, logs, attach, exec, stats).
//! - [`events`]: the event bus behind `GET /events`.
//! - [`filters`]: Docker's `filters` query parameter in both JSON shapes.
//! - [`error`]: [`error::EngineError`] and its one mapping to Docker's
//!   `{"message": …}` replies.
//! - [`system`]: host and storage facts for `/info`, the `/system/df`
//!   numbers.
//! - [`storage`]: driver selection and the per-driver data layout.
//! - [`config`]: flags and `daemon.json`.
//! - [`server`]: listeners (unix, TCP, systemd), TLS, and the HTTP server
//!   with its clean shutdown.
#![forbid(unsafe_code)]
#![recursion_limit = "256"]

pub mod api;
pub mod config;
pub mod containers;
pub mod error;
pub mod events;
pub mod filters;
pub mod images;
pub mod registry;
pub mod server;
pub mod state;
pub mod storage;
pub mod system;
pub mod volumes;

pub use error::EngineError;
pub use events::EventBus;
pub use state::{Engine, EngineConfig};
