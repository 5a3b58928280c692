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
    /// Whether the connection is of no more use (and another endpoint may do better).
    pub fn is_connection(&self) -> bool {
        matches!(self.why, Why::Io(_) | Why::Malformed(_))
    }

    /// etcd no longer takes our auth token (it restarted, or the token expired).
    pub fn is_invalid_token(&self) -> bool {
        matches!(&self.why, Why::Refused { status: 401, .. })
    }
}

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
