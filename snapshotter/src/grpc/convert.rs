//! Conversions between the domain types and the wire types, and the error
//! mapping: [`status_from_error`] on the server side, [`error_from_status`] on
//! the client side. Nothing else maps errors, so a kind survives a round trip.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_proto::snapshots as pb;
use strata_proto::types as pbt;
use tonic::{Code, Status};

use crate::error::{Error, ErrorKind};
use crate::types::{Info, Kind, Labels, Mount, Usage};

/// Maps a snapshotter error to the gRPC status containerd expects.
pub fn status_from_error(err: &Error) -> Status {
    let code = match err.kind() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    };
    Status::new(code, err.message())
}

/// Maps a gRPC status back to a snapshotter error. Codes without a kind of
/// their own become `Unavailable` (the call did not complete: cancelled,
/// deadline exceeded, or a local transport failure such as the connection
/// dropping mid-call) or `Internal` (anything else), with the code named in
/// the message.
pub fn error_from_status(status: &Status) -> Error {
    let message = status.message();
    // Statuses decoded from the wire carry no source; tonic attaches one only
    // to failures it produced locally (the server never sends `Unknown`).
    if status.code() == Code::Unknown && std::error::Error::source(status).is_some() {
        return Error::unavailable(format!("transport failure: {}", error_chain(status)));
    }
    let kind = match status.code() {
        Code::NotFound => ErrorKind::NotFound,
        Code::AlreadyExists => ErrorKind::AlreadyExists,
        Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        Code::InvalidArgument => ErrorKind::InvalidArgument,
        Code::Unimplemented => ErrorKind::Unimplemented,
        Code::Unavailable => ErrorKind::Unavailable,
        Code::Internal => ErrorKind::Internal,
        Code::Cancelled | Code::DeadlineExceeded => {
            return Error::unavailable(format!("{:?}: {message}", status.code()));
        }
        other => return Error::internal(format!("{other:?}: {message}")),
    };
    Error::new(kind, message)
}

/// An error and its sources on one line (transport errors hide the cause).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        // Some errors (tonic's transport error among them) already print
        // their cause; say each part once.
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// The wire value of a kind; never `UNKNOWN`.
pub fn kind_to_proto(kind: Kind) -> pb::Kind {
    match kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    }
}

/// The kind of a wire value. Like containerd, anything that is neither
/// `ACTIVE` nor `VIEW` (including `UNKNOWN` and values from the future) reads
/// as `Committed`.
pub fn kind_from_proto(kind: i32) -> Kind {
    match pb::Kind::try_from(kind) {
        Ok(pb::Kind::Active) => Kind::Active,
        Ok(pb::Kind::View) => Kind::View,
        _ => Kind::Committed,
    }
}

/// A point in time as a protobuf timestamp.
pub fn timestamp_to_proto(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// A protobuf timestamp as a point in time; absent or out-of-range values
/// read as the epoch.
pub fn timestamp_from_proto(ts: Option<&prost_types::Timestamp>) -> SystemTime {
    let Some(ts) = ts else { return UNIX_EPOCH };
    let mut ts = *ts;
    ts.normalize();
    if ts.seconds >= 0 {
        let nanos = u32::try_from(ts.nanos).unwrap_or(0);
        // `seconds` is non-negative here, so the cast is exact.
        UNIX_EPOCH.checked_add(Duration::new(ts.seconds as u64, nanos)).unwrap_or(UNIX_EPOCH)
    } else {
        SystemTime::try_from(ts).unwrap_or(UNIX_EPOCH)
    }
}

pub fn labels_to_proto(labels: &Labels) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn labels_from_proto(labels: HashMap<String, String>) -> Labels {
    labels.into_iter().collect()
}

pub fn info_to_proto(info: &Info) -> pb::Info {
    pb::Info {
        name: info.name.clone(),
        parent: info.parent.clone(),
        kind: kind_to_proto(info.kind) as i32,
        created_at: Some(timestamp_to_proto(info.created)),
        updated_at: Some(timestamp_to_proto(info.updated)),
        labels: labels_to_proto(&info.labels),
    }
}

pub fn info_from_proto(info: pb::Info) -> Info {
    Info {
        kind: kind_from_proto(info.kind),
        created: timestamp_from_proto(info.created_at.as_ref()),
        updated: timestamp_from_proto(info.updated_at.as_ref()),
        labels: labels_from_proto(info.labels),
        name: info.name,
        parent: info.parent,
    }
}

pub fn mount_to_proto(mount: &Mount) -> pbt::Mount {
    pbt::Mount {
        r#type: mount.fstype.clone(),
        source: mount.source.clone(),
        target: mount.target.clone(),
        options: mount.options.clone(),
    }
}

pub fn mount_from_proto(mount: pbt::Mount) -> Mount {
    Mount { fstype: mount.r#type, source: mount.source, target: mount.target, options: mount.options }
}

pub fn mounts_to_proto(mounts: &[Mount]) -> Vec<pbt::Mount> {
    mounts.iter().map(mount_to_proto).collect()
}

pub fn mounts_from_proto(mounts: Vec<pbt::Mount>) -> Vec<Mount> {
    mounts.into_iter().map(mount_from_proto).collect()
}

pub fn usage_to_proto(usage: Usage) -> pb::UsageResponse {
    pb::UsageResponse { size: usage.size, inodes: usage.inodes }
}

pub fn usage_from_proto(usage: pb::UsageResponse) -> Usage {
    Usage { size: usage.size, inodes: usage.inodes }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [ErrorKind; 7] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::FailedPrecondition,
        ErrorKind::InvalidArgument,
        ErrorKind::Unimplemented,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    #[test]
    fn error_chain_says_each_cause_once() {
        #[derive(Debug)]
        struct Wraps(std::io::Error, bool);
        impl std::fmt::Display for Wraps {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                if self.1 { write!(f, "transport error: {}", self.0) } else { write!(f, "transport error") }
            }
        }
        impl std::error::Error for Wraps {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let quiet = error_chain(&Wraps(io(), false));
        let repeats = error_chain(&Wraps(io(), true));
        assert_eq!(quiet, format!("transport error: {}", io()));
        assert_eq!(repeats, quiet, "a cause the error already prints is not repeated");
    }

    #[test]
    fn every_error_kind_survives_the_round_trip() {
        for kind in KINDS {
            let err = Error::new(kind, format!("boom {kind:?}"));
            let status = status_from_error(&err);
            assert_eq!(error_from_status(&status), err, "kind {kind:?}");
        }
    }

    #[test]
    fn error_kinds_map_to_containerd_codes() {
        let codes: Vec<Code> =
            KINDS.iter().map(|k| status_from_error(&Error::new(*k, "x")).code()).collect();
        assert_eq!(
            codes,
            [
                Code::NotFound,
                Code::AlreadyExists,
                Code::FailedPrecondition,
                Code::InvalidArgument,
                Code::Unimplemented,
                Code::Unavailable,
                Code::Internal
            ]
        );
    }

    #[test]
    fn foreign_codes_become_internal_or_unavailable() {
        let err = error_from_status(&Status::unknown("raw store error"));
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert_eq!(err.message(), "Unknown: raw store error");
        let err = error_from_status(&Status::deadline_exceeded("slow"));
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let err = error_from_status(&Status::permission_denied("no"));
        assert_eq!(err.kind(), ErrorKind::Internal);
        let local = Status::from_error(Box::new(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe closed")));
        let err = error_from_status(&local);
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.message().contains("pipe closed"), "{err}");
    }

    #[test]
    fn kinds_never_go_out_as_unknown_and_unknown_reads_as_committed() {
        for kind in [Kind::View, Kind::Active, Kind::Committed] {
            let wire = kind_to_proto(kind);
            assert_ne!(wire, pb::Kind::Unknown);
            assert_eq!(kind_from_proto(wire as i32), kind);
        }
        assert_eq!(kind_from_proto(pb::Kind::Unknown as i32), Kind::Committed);
        assert_eq!(kind_from_proto(42), Kind::Committed);
    }

    #[test]
    fn info_round_trips_with_nanosecond_timestamps() {
        let created = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let info = Info {
            name: "default/3/sha256:abc def".into(),
            parent: "default/2/sha256:012".into(),
            kind: Kind::Active,
            created,
            updated: created + Duration::from_nanos(1),
            labels: Labels::from([
                ("containerd.io/snapshot.ref".to_string(), "sha256:abc".to_string()),
                ("x".to_string(), String::new()),
            ]),
        };
        let wire = info_to_proto(&info);
        assert!(wire.created_at.is_some() && wire.updated_at.is_some());
        assert_eq!(info_from_proto(wire), info);
    }

    #[test]
    fn missing_or_negative_timestamps_are_handled() {
        assert_eq!(timestamp_from_proto(None), UNIX_EPOCH);
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(timestamp_from_proto(Some(&timestamp_to_proto(before))), before);
        let odd = prost_types::Timestamp { seconds: 5, nanos: -1 };
        assert_eq!(timestamp_from_proto(Some(&odd)), UNIX_EPOCH + Duration::new(4, 999_999_999));
    }

    #[test]
    fn mounts_and_usage_round_trip() {
        let mounts = vec![
            Mount {
                fstype: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec!["index=off".into(), "lowerdir=/a:/b".into()],
            },
            Mount { fstype: "bind".into(), source: "/x".into(), target: String::new(), options: vec!["ro".into(), "rbind".into()] },
        ];
        assert_eq!(mounts_from_proto(mounts_to_proto(&mounts)), mounts);
        let usage = Usage { size: 1 << 40, inodes: 7 };
        assert_eq!(usage_from_proto(usage_to_proto(usage)), usage);
    }
}
