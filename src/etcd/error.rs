//! What went wrong with a call to etcd, naming the endpoint and the call, so that one log line
//! says where to look: `etcd 127.0.0.1:2379: range /lb-mio/: connection refused`.

use std::fmt;
use std::io;

#[derive(Debug)]
pub struct Error {
    /// `host:port` of the member asked (every endpoint's, when none answered).
    pub endpoint: String,
    /// The call and its key, e.g. `range /lb-mio/`.
    pub call: String,
    pub why: Why,
}

#[derive(Debug)]
pub enum Why {
    /// The connection failed: refused, reset, closed or timed out.
    Io(io::Error),
    /// etcd answered with an error (its HTTP status and message).
    Refused { status: u16, message: String },
    /// The answer was not the HTTP or JSON expected (or a key or value not base64, named).
    Malformed(String),
}

impl Error {
    /// Whether another member may do better: the connection failed, or this member answered
    /// that it cannot serve now (HTTP 5xx: no leader, no quorum, a request that timed out).
    pub fn is_member(&self) -> bool {
        match &self.why {
            Why::Io(_) | Why::Malformed(_) => true,
            Why::Refused { status, .. } => *status >= 500,
        }
    }

    /// Whether a call that failed so may still have been carried out: the request went out
    /// and no answer, or an unclear one, came back.
    pub fn may_have_run(&self) -> bool {
        match &self.why {
            Why::Io(e) => {
                e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock
            }
            Why::Malformed(_) => true,
            // A member with no leader refuses before it proposes anything.
            Why::Refused { status, message } => *status >= 500 && !message.contains(NO_LEADER),
        }
    }
}

/// etcd's answer when the member asked has no leader (`rpctypes.ErrNoLeader`).
const NO_LEADER: &str = "no leader";

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd {}: {}: {}", self.endpoint, self.call, self.why)
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Io(e) => write!(f, "{e}"),
            Why::Refused { status, message } => write!(f, "{message} (HTTP {status})"),
            Why::Malformed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Why {
    fn from(e: io::Error) -> Why {
        Why::Io(e)
    }
}
