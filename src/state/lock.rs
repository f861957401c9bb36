//! Lock holder information, and stale-lock detection.
//!
//! A lock records who took it (user, host, process id), for what operation and when. A lock held
//! by a process of this host that no longer runs is *stale*: it is reported as such, with the
//! command that clears it, but never broken silently.

use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who holds the lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockInfo {
    /// Identifies the lock for `dstack state unlock ID`.
    pub id: String,
    /// The command that took it (`apply`, `delete`, `state push`, ...).
    pub operation: String,
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub created_at: DateTime<Utc>,
    /// The dstack version of the holder.
    pub version: String,
}

impl LockInfo {
    /// Lock information for this process.
    pub fn new(operation: &str) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            operation: operation.to_string(),
            user: whoami::username().unwrap_or_else(|_| "unknown".into()),
            host: this_host(),
            pid: std::process::id(),
            created_at: Utc::now(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Held by a process of this host that is gone.
    pub fn is_stale(&self) -> bool {
        self.host == this_host() && !process_alive(self.pid)
    }
}

impl fmt::Display for LockInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} (pid {}, `{}` since {}, lock id {})",
            self.user,
            self.host,
            self.pid,
            self.operation,
            self.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.id
        )
    }
}

/// The name of this host.
pub fn this_host() -> String {
    hostname::get().map_or_else(|_| "unknown".into(), |h| h.to_string_lossy().into_owned())
}

/// Whether a process of this host is alive.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

/// A zombie (exited, not yet reaped) counts as gone.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        assert!(!process_alive(pid));
        let mut lock = LockInfo::new("apply");
        assert!(!lock.is_stale());
        lock.pid = pid;
        assert!(lock.is_stale());
        lock.host = "elsewhere".into();
        assert!(
            !lock.is_stale(),
            "a lock of another host is never judged stale"
        );
    }
}
