//! Settings of the IO side of a session.

use std::time::Duration;

use crate::proto::auth::Key;
use crate::proto::queue::QueueBounds;
use crate::proto::session::SessionConfig;

#[derive(Clone, Debug)]
pub struct StripedConfig {
    pub session: SessionConfig,
    /// Unsent bytes a stripe socket may hold (TCP_NOTSENT_LOWAT).
    pub unsent: UnsentLimit,
    /// Congestion control of the stripe sockets; `None`: the system's.
    pub congestion: Option<String>,
    /// How long a stripe may take to connect.
    pub connect_timeout: Duration,
    /// How long a finished or aborted session waits for the peer to close.
    pub close_linger: Duration,
    /// Buffers of a session idle this long are freed.
    pub idle_release: Duration,
    /// How long a session with no stripe at all is kept for a stripe to
    /// come back. Zero: fail at once.
    pub resume_timeout: Duration,
    /// The pre-shared key; `None` runs without authentication.
    pub key: Option<Key>,
}

impl Default for StripedConfig {
    fn default() -> Self {
        StripedConfig {
            session: SessionConfig::default(),
            unsent: UnsentLimit::Auto(QueueBounds::default()),
            congestion: None,
            connect_timeout: Duration::from_secs(10),
            close_linger: Duration::from_secs(5),
            idle_release: Duration::from_secs(2),
            resume_timeout: Duration::from_secs(60),
            key: None,
        }
    }
}

/// How each stripe's unsent limit is set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnsentLimit {
    /// Follows the stripe's rate x round trip (see [`crate::proto::queue`]).
    Auto(QueueBounds),
    /// The same for every stripe, whatever its path.
    Fixed(u32),
}
