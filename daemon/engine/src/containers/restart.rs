//! Restart policies (`HostConfig.RestartPolicy`) as dockerd applies them:
//! which exits are followed by a new start, and after how long.
//!
//! - `no` (or empty): never.
//! - `always`: after every exit, and when the daemon starts.
//! - `unless-stopped`: as `always`, except for a container stopped on
//!   request (stop, kill, rm -f); that mark survives a daemon restart.
//! - `on-failure[:max]`: after a non-zero exit, at most `max` times (0 = no
//!   limit) since the last start on request.
//!
//! A stop, kill or forced removal on request is never followed by a
//! restart, whatever the policy. The delay before a restart starts at
//! 100 ms and doubles after every restart up to one minute; it falls back
//! to 100 ms once a run lasted at least ten seconds.

use std::time::Duration;

use serde_json::{json, Value};

use crate::error::EngineError;

/// The first delay, and the factor applied after each restart.
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the delay.
pub const STABLE_RUN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

/// A parsed restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: Kind,
    /// `MaximumRetryCount` of on-failure; 0 means no limit.
    pub max_retries: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { kind: Kind::No, max_retries: 0 }
    }
}

impl Policy {
    /// Parses and checks a `RestartPolicy` object (absent or null = `no`),
    /// with dockerd's messages.
    pub fn parse(value: Option<&Value>) -> Result<Policy, EngineError> {
        let (name, max) = match value {
            None | Some(Value::Null) => return Ok(Policy::default()),
            Some(Value::Object(m)) => {
                let name = match m.get("Name") {
                    None | Some(Value::Null) => "",
                    Some(Value::String(s)) => s.as_str(),
                    Some(_) => return Err(EngineError::invalid("RestartPolicy.Name must be a string")),
                };
                let max = match m.get("MaximumRetryCount") {
                    None | Some(Value::Null) => 0,
                    Some(v) => v
                        .as_i64()
                        .ok_or_else(|| EngineError::invalid("RestartPolicy.MaximumRetryCount must be an integer"))?,
                };
                (name, max)
            }
            Some(_) => return Err(EngineError::invalid("RestartPolicy must be a JSON object")),
        };
        let kind = match name {
            "" | "no" => Kind::No,
            "always" => Kind::Always,
            "unless-stopped" => Kind::UnlessStopped,
            "on-failure" => Kind::OnFailure,
            other => return Err(EngineError::invalid(format!("invalid restart policy '{other}'"))),
        };
        if kind != Kind::OnFailure && max != 0 {
            return Err(EngineError::invalid(format!("maximum retry count cannot be used with restart policy '{name}'")));
        }
        if max < 0 {
            return Err(EngineError::invalid("maximum retry count cannot be negative"));
        }
        Ok(Policy { kind, max_retries: max })
    }

    /// The policy of a stored `HostConfig`; a record that does not parse
    /// (written by hand) counts as `no`.
    pub fn of_host_config(host_config: &Value) -> Policy {
        Policy::parse(host_config.get("RestartPolicy")).unwrap_or_default()
    }

    pub fn is_none(self) -> bool {
        self.kind == Kind::No
    }

    pub fn name(self) -> &'static str {
        match self.kind {
            Kind::No => "no",
            Kind::Always => "always",
            Kind::UnlessStopped => "unless-stopped",
            Kind::OnFailure => "on-failure",
        }
    }

    /// The object shown in `HostConfig.RestartPolicy`.
    pub fn to_json(self) -> Value {
        json!({"Name": self.name(), "MaximumRetryCount": self.max_retries})
    }

    /// Whether a process that exited with `exit_code` is started again.
    /// `manual`: it was stopped on request or the daemon is shutting down;
    /// `restarts`: the restarts since the last start on request.
    pub fn restarts_after_exit(self, exit_code: i64, manual: bool, restarts: u64) -> bool {
        if manual {
            return false;
        }
        match self.kind {
            Kind::No => false,
            Kind::Always | Kind::UnlessStopped => true,
            Kind::OnFailure => exit_code != 0 && self.under_limit(restarts),
        }
    }

    /// Whether the daemon starts a stopped container when it starts itself.
    pub fn restarts_at_boot(self, exit_code: i64, stopped_by_user: bool, restarts: u64) -> bool {
        match self.kind {
            Kind::No => false,
            Kind::Always => true,
            Kind::UnlessStopped => !stopped_by_user,
            Kind::OnFailure => !stopped_by_user && exit_code != 0 && self.under_limit(restarts),
        }
    }

    fn under_limit(self, restarts: u64) -> bool {
        self.max_retries == 0 || restarts < u64::try_from(self.max_retries).unwrap_or(u64::MAX)
    }
}

/// Refuses a restart policy on an auto-removed container, as dockerd.
pub fn check_auto_remove(policy: Policy, auto_remove: bool) -> Result<(), EngineError> {
    if auto_remove && !policy.is_none() {
        return Err(EngineError::invalid("can't create 'AutoRemove' container with restart policy"));
    }
    Ok(())
}

/// The growing delay between restarts of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    delay: Duration,
}

impl Backoff {
    /// The delay before the next restart after a run that lasted `ran`.
    pub fn next(&mut self, ran: Duration) -> Duration {
        if ran >= STABLE_RUN {
            self.delay = Duration::ZERO;
        }
        self.delay = if self.delay.is_zero() { INITIAL_DELAY } else { (self.delay * 2).min(MAX_DELAY) };
        self.delay
    }

    /// Back to the first delay (a start on request).
    pub fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Policy, String> {
        Policy::parse(Some(&v)).map_err(|e| e.message().to_string())
    }

    #[test]
    fn policies_parse_with_dockerds_messages() {
        assert_eq!(Policy::parse(None).unwrap(), Policy::default());
        assert_eq!(parse(json!({"Name": ""})).unwrap().kind, Kind::No);
        assert_eq!(parse(json!({"Name": "always"})).unwrap().kind, Kind::Always);
        assert_eq!(parse(json!({"Name": "unless-stopped", "MaximumRetryCount": 0})).unwrap().kind, Kind::UnlessStopped);
        assert_eq!(parse(json!({"Name": "on-failure", "MaximumRetryCount": 2})).unwrap(), Policy { kind: Kind::OnFailure, max_retries: 2 });
        assert_eq!(parse(json!({"Name": "sometimes"})).unwrap_err(), "invalid restart policy 'sometimes'");
        assert_eq!(
            parse(json!({"Name": "always", "MaximumRetryCount": 3})).unwrap_err(),
            "maximum retry count cannot be used with restart policy 'always'"
        );
        assert_eq!(
            parse(json!({"Name": "on-failure", "MaximumRetryCount": -1})).unwrap_err(),
            "maximum retry count cannot be negative"
        );
        assert!(parse(json!("always")).is_err());
        let p = parse(json!({"Name": "on-failure", "MaximumRetryCount": 2})).unwrap();
        assert_eq!(p.to_json(), json!({"Name": "on-failure", "MaximumRetryCount": 2}));
        assert!(check_auto_remove(p, true).is_err());
        assert!(check_auto_remove(Policy::default(), true).is_ok());
    }

    #[test]
    fn decisions() {
        let always = Policy { kind: Kind::Always, max_retries: 0 };
        let unless = Policy { kind: Kind::UnlessStopped, max_retries: 0 };
        let on_failure = Policy { kind: Kind::OnFailure, max_retries: 2 };
        assert!(always.restarts_after_exit(0, false, 100));
        assert!(!always.restarts_after_exit(0, true, 0));
        assert!(!on_failure.restarts_after_exit(0, false, 0));
        assert!(on_failure.restarts_after_exit(3, false, 1));
        assert!(!on_failure.restarts_after_exit(3, false, 2));
        assert!(Policy { kind: Kind::OnFailure, max_retries: 0 }.restarts_after_exit(1, false, 1000));
        assert!(!Policy::default().restarts_after_exit(1, false, 0));
        assert!(always.restarts_at_boot(0, true, 0));
        assert!(!unless.restarts_at_boot(0, true, 0));
        assert!(unless.restarts_at_boot(137, false, 0));
        assert!(on_failure.restarts_at_boot(255, false, 0));
        assert!(!on_failure.restarts_at_boot(0, false, 0));
    }

    #[test]
    fn backoff_doubles_and_resets_after_a_stable_run() {
        let mut b = Backoff::default();
        let short = Duration::from_millis(5);
        assert_eq!(b.next(short), Duration::from_millis(100));
        assert_eq!(b.next(short), Duration::from_millis(200));
        assert_eq!(b.next(short), Duration::from_millis(400));
        assert_eq!(b.next(Duration::from_secs(10)), Duration::from_millis(100));
        for _ in 0..20 {
            b.next(short);
        }
        assert_eq!(b.next(short), MAX_DELAY);
        b.reset();
        assert_eq!(b.next(short), Duration::from_millis(100));
    }
}
