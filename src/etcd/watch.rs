//! A watch: etcd's streamed answer to `POST /v3/watch`, a chunked body carrying one JSON
//! object per line, read one message at a time. The stream may be silent for as long as
//! nothing changes; progress notifications and TCP keepalive tell a live member from a dead
//! one, so no read here fails for taking long, it only gives up at the caller's deadline.

use super::connection::{timed_out, Connection, Session, MAX_BODY};
use super::error::{Error, Why};
use super::wire::{self, malformed, Event};
use crate::http::body::Framing;
use crate::http::chunked::ChunkedDecoder;
use serde_json::{json, Value};
use std::time::Instant;

/// Trailer bytes taken after the stream's last chunk.
const MAX_TRAILER: usize = 4096;

/// One message of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Changes in the order made, each with its own revision; `revision` is the store's
    /// when etcd sent them (a watch catching up gets many revisions' changes at once).
    Events { revision: i64, events: Vec<Event> },
    /// Nothing changed under the prefix up to `revision`.
    Progress { revision: i64 },
    /// The revision asked for was compacted away: read the prefix again at or after
    /// `revision` and watch from there. The watch is over.
    Compacted { revision: i64 },
    /// etcd ended the watch (the watch is over).
    Canceled { reason: String },
}

pub struct Watch {
    conn: Connection,
    decoder: ChunkedDecoder,
    /// De-chunked bytes not yet taken as a line.
    data: Vec<u8>,
    /// How much of `data` is known to hold no line end.
    searched: usize,
    /// The call, for errors: `watch /lb-mio/ from revision 7`.
    call: String,
}

impl Watch {
    /// Asks for the watch on `session` and waits (until `deadline`) for etcd to confirm it.
    pub(super) fn start(
        session: Session,
        prefix: &[u8],
        start_revision: i64,
        deadline: Instant,
    ) -> Result<Watch, Why> {
        let mut create = wire::prefix_range(prefix);
        create.insert("start_revision".into(), wire::int_value(start_revision));
        create.insert("progress_notify".into(), Value::Bool(true));
        let body = json!({"create_request": create}).to_string();
        let Session { mut conn, token } = session;
        // A member cut off from its cluster cancels the watch (etcd's "require leader"),
        // rather than leave it silent while others move on.
        let has_leader = [("Grpc-Metadata-hasleader", "true")];
        conn.send(
            "/v3/watch",
            token.as_deref(),
            &has_leader,
            body.as_bytes(),
            deadline,
        )?;
        let head = conn.read_head(deadline)?;
        if head.status != 200 || head.framing != Framing::Chunked {
            let body = conn.read_body(&head, deadline)?;
            let answer = serde_json::from_slice::<Value>(&body).ok();
            let message = (answer.as_ref().and_then(wire::error_message))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(Why::Refused {
                status: head.status,
                message,
            });
        }
        let mut watch = Watch {
            conn,
            decoder: ChunkedDecoder::new(MAX_TRAILER),
            data: Vec::new(),
            searched: 0,
            call: String::new(),
        };
        match watch.result(deadline)? {
            // etcd turns a watch it does not allow (no or a bad auth token, no permission)
            // down in the answer that creates it: created, and canceled at once.
            Some(result) if refused(&result) => Err(Why::Refused {
                status: head.status,
                message: cancel_reason(&result),
            }),
            Some(result) if wire::flag(&result, "created") => Ok(watch),
            Some(result) => Err(malformed(format!("not created: {result}"))),
            None => Err(malformed("not created in time".into())),
        }
    }

    /// Names the watch for its errors.
    pub(super) fn named(mut self, call: &str) -> Watch {
        self.call = call.to_string();
        self
    }

    /// The next message, or `None` if none came whole by `deadline` (a silent watch is
    /// normal). An error ends the watch: open a new one from the last revision seen.
    pub fn next(&mut self, deadline: Instant) -> Result<Option<Message>, Error> {
        let message = match self.result(deadline) {
            Ok(Some(result)) => message(&result).map(Some),
            Ok(None) => Ok(None),
            Err(why) => Err(why),
        };
        message.map_err(|why| Error {
            endpoint: self.conn.endpoint().to_string(),
            call: self.call.clone(),
            why,
        })
    }

    /// The `result` of the next line, or `None` at the deadline.
    fn result(&mut self, deadline: Instant) -> Result<Option<Value>, Why> {
        let Some(line) = self.line(deadline)? else {
            return Ok(None);
        };
        let mut line = serde_json::from_slice::<Value>(&line)
            .map_err(|e| malformed(format!("a watch message that is not JSON: {e}")))?;
        if let Some(message) = wire::error_message(&line) {
            return Err(Why::Refused {
                status: 200,
                message,
            });
        }
        match line.get_mut("result") {
            Some(result) => Ok(Some(result.take())),
            None => Err(malformed(format!(
                "a watch message without a result: {line}"
            ))),
        }
    }

    /// The next line of the stream (without its `\n`), or `None` at the deadline.
    fn line(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, Why> {
        loop {
            if let Some(end) = self.data[self.searched..].iter().position(|&b| b == b'\n') {
                let end = self.searched + end;
                let line = self.data.drain(..=end).take(end).collect();
                self.searched = 0;
                return Ok(Some(line));
            }
            self.searched = self.data.len();
            if self.data.len() > MAX_BODY {
                return Err(malformed(format!("a watch message over {MAX_BODY} bytes")));
            }
            match self
                .conn
                .read_chunked(&mut self.decoder, &mut self.data, deadline)
            {
                Ok(false) => {}
                Ok(true) => return Err(malformed("etcd ended the watch stream".into())),
                Err(why) if timed_out(&why) => return Ok(None),
                Err(why) => return Err(why),
            }
        }
    }
}

/// Whether the answer to a create request turns the watch down. A compacted start revision
/// is no refusal: `message` tells it, with the revision to read from.
fn refused(result: &Value) -> bool {
    wire::flag(result, "canceled")
        && !matches!(wire::int(result, "compact_revision"), Ok(r) if r > 0)
}

fn cancel_reason(result: &Value) -> String {
    let reason = result["cancel_reason"].as_str();
    reason.unwrap_or("no reason given").to_string()
}

/// What a watch answer says.
fn message(result: &Value) -> Result<Message, Why> {
    let compact_revision = wire::int(result, "compact_revision")?;
    if compact_revision > 0 {
        return Ok(Message::Compacted {
            revision: compact_revision,
        });
    }
    if wire::flag(result, "canceled") {
        return Ok(Message::Canceled {
            reason: cancel_reason(result),
        });
    }
    let revision = wire::header_revision(result)?;
    let events = wire::events(result)?;
    Ok(match events.is_empty() {
        true => Message::Progress { revision },
        false => Message::Events { revision, events },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(line: &str) -> Message {
        message(&serde_json::from_str::<Value>(line).unwrap()["result"]).unwrap()
    }

    #[test]
    fn each_kind_of_answer_is_its_message() {
        let put = r#"{"result":{"header":{"revision":"3"},"events":[{"kv":{"key":"YQ==","mod_revision":"3"}},{"type":"DELETE","kv":{"key":"Yg==","mod_revision":"3"}}]}}"#;
        let Message::Events { revision, events } = read(put) else {
            panic!()
        };
        assert_eq!(revision, 3);
        assert!(matches!(&events[0], Event::Put(kv) if kv.key == b"a"));
        assert_eq!(
            events[1],
            Event::Delete {
                key: b"b".to_vec(),
                mod_revision: 3
            }
        );
        let progress = r#"{"result":{"header":{"revision":"9"}}}"#;
        assert_eq!(read(progress), Message::Progress { revision: 9 });
        let compacted =
            r#"{"result":{"header":{"revision":"9"},"compact_revision":"5","canceled":true}}"#;
        assert_eq!(read(compacted), Message::Compacted { revision: 5 });
        let canceled = r#"{"result":{"header":{},"canceled":true,"cancel_reason":"gone"}}"#;
        assert_eq!(
            read(canceled),
            Message::Canceled {
                reason: "gone".into()
            }
        );
    }
}
