//! Error kinds of the snapshotter layer.
//!
//! Every failure is classified once, by [`ErrorKind`]; the gRPC adapter maps
//! kinds to status codes in exactly one place (`grpc::status_from_error`) and
//! the client maps them back (`grpc::error_from_status`), so a kind survives
//! the round trip.

use std::fmt;

/// The class of a snapshotter failure. These are containerd's errdefs classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The key, name or parent does not exist.
    NotFound,
    /// The key or name is already taken.
    AlreadyExists,
    /// The snapshot is in the wrong state for the operation (committing a
    /// view, removing a snapshot that has children, ...).
    FailedPrecondition,
    /// The request itself is malformed (empty key, bad filter, labels too
    /// large, parent that is not committed, ...).
    InvalidArgument,
    /// The operation is not supported by this driver.
    Unimplemented,
    /// The service cannot be reached.
    Unavailable,
    /// Anything else: I/O failures, corrupt metadata.
    Internal,
}

/// A snapshotter error: a kind and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unimplemented, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// An I/O failure with what was being done, e.g. `io("create /x", err)`.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        Self::internal(format!("{context}: {err}"))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Returns the same error with `context: ` put before its message.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self { kind: self.kind, message: format!("{context}: {}", self.message) }
    }
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
    pub fn is_already_exists(&self) -> bool {
        self.kind == ErrorKind::AlreadyExists
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Result type of the snapshotter layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
