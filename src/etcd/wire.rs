//! The JSON shapes of etcd's v3 gateway: requests built from our values, answers read into
//! them. The gateway follows proto3's JSON mapping: bytes are base64, int64s are strings, and a
//! field at its default (0, false, empty) is left out, so a missing field reads as its default.

use super::base64;
use super::error::Why;
use serde_json::{json, Map, Value};

/// One key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision of its last change: what `Client::put_if` compares.
    pub mod_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    /// The key and the revision that deleted it.
    Delete {
        key: Vec<u8>,
        mod_revision: i64,
    },
}

impl Event {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// The key range holding every key that starts with `prefix` (an empty prefix: every key).
pub fn prefix_range(prefix: &[u8]) -> Map<String, Value> {
    let mut end = prefix.to_vec();
    // The end is the prefix with its last byte below 0xff bumped; all 0xff bytes (or none)
    // have no such end, and "\0" means "to the end of the key space".
    while end.last() == Some(&0xff) {
        end.pop();
    }
    match end.last_mut() {
        Some(last) => *last += 1,
        None => end.push(0),
    }
    let mut range = Map::new();
    range.insert("key".into(), bytes_value(prefix));
    range.insert("range_end".into(), bytes_value(&end));
    range
}

pub fn bytes_value(bytes: &[u8]) -> Value {
    Value::String(base64::encode(bytes))
}

/// A put, with its lease unless 0.
pub fn put_request(key: &[u8], value: &[u8], lease: i64) -> Value {
    let mut put = json!({"key": bytes_value(key), "value": bytes_value(value)});
    if lease != 0 {
        put["lease"] = int_value(lease);
    }
    put
}

/// A transaction that runs `operation` (`{"request_put": ...}` or `{"request_delete_range":
/// ...}`) if `key`'s mod_revision is still `mod_revision` (0: the key does not exist).
pub fn guarded_txn(key: &[u8], mod_revision: i64, operation: Value) -> Value {
    json!({
        "compare": [{
            "key": bytes_value(key),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": int_value(mod_revision),
        }],
        "success": [operation],
    })
}

pub fn int_value(n: i64) -> Value {
    Value::String(n.to_string())
}

/// An int64 field: a JSON string (or number) holding an integer; missing is 0.
pub fn int(object: &Value, field: &str) -> Result<i64, Why> {
    match object.get(field) {
        None | Some(Value::Null) => Some(0),
        Some(Value::String(text)) => text.parse().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        Some(_) => None,
    }
    .ok_or_else(|| malformed(format!("{field} is not an integer: {}", object[field])))
}

/// A bool field; missing is false.
pub fn flag(object: &Value, field: &str) -> bool {
    object.get(field).and_then(Value::as_bool).unwrap_or(false)
}

/// The revision of the store when etcd answered.
pub fn header_revision(answer: &Value) -> Result<i64, Why> {
    int(&answer["header"], "revision")
}

/// The `kvs` of a range answer.
pub fn kvs(answer: &Value) -> Result<Vec<Kv>, Why> {
    list(answer, "kvs")?.iter().map(kv).collect()
}

/// The `events` of a watch answer, in order.
pub fn events(result: &Value) -> Result<Vec<Event>, Why> {
    list(result, "events")?.iter().map(event).collect()
}

fn event(event: &Value) -> Result<Event, Why> {
    let kv = kv(&event["kv"])?;
    match event.get("type").and_then(Value::as_str) {
        None | Some("PUT") => Ok(Event::Put(kv)),
        Some("DELETE") => Ok(Event::Delete {
            key: kv.key,
            mod_revision: kv.mod_revision,
        }),
        Some(other) => Err(malformed(format!(
            "key {}: unknown event type {other:?}",
            shown(&kv.key)
        ))),
    }
}

fn kv(kv: &Value) -> Result<Kv, Why> {
    let key = bytes(kv, "key").map_err(|why| malformed(format!("key {}: {why}", kv["key"])))?;
    let named = |why: Why| match why {
        Why::Malformed(why) => malformed(format!("key {}: {why}", shown(&key))),
        other => other,
    };
    Ok(Kv {
        value: bytes(kv, "value").map_err(named)?,
        mod_revision: int(kv, "mod_revision").map_err(named)?,
        lease: int(kv, "lease").map_err(named)?,
        key,
    })
}

/// A bytes field: base64 in a JSON string; missing is empty.
fn bytes(object: &Value, field: &str) -> Result<Vec<u8>, Why> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => {
            base64::decode(text).map_err(|why| malformed(format!("{field}: {why}")))
        }
        Some(other) => Err(malformed(format!("{field} is not a string: {other}"))),
    }
}

fn list<'a>(object: &'a Value, field: &str) -> Result<&'a [Value], Why> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(malformed(format!("{field} is not a list"))),
    }
}

/// What an error answer says: `{"error": "...", "message": "...", "code": 16}` for a call, or
/// `{"error": {"message": "...", ...}}` inside a stream.
pub fn error_message(answer: &Value) -> Option<String> {
    let error = answer.get("error")?;
    let text = match error {
        Value::String(text) => text.as_str(),
        other => other["message"].as_str().unwrap_or("unknown error"),
    };
    Some(text.to_string())
}

/// A key for a message: its text, or its bytes escaped where they are not UTF-8.
pub fn shown(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

pub fn malformed(why: String) -> Why {
    Why::Malformed(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_ends_past_every_key_with_the_prefix() {
        let end =
            |prefix: &[u8]| base64::decode(prefix_range(prefix)["range_end"].as_str().unwrap());
        assert_eq!(end(b"/lb-mio/").unwrap(), b"/lb-mio0");
        assert_eq!(end(b"a\xff\xff").unwrap(), b"b");
        assert_eq!(end(b"").unwrap(), b"\0");
        assert_eq!(end(b"\xff").unwrap(), b"\0");
    }

    #[test]
    fn missing_fields_read_as_their_defaults() {
        let answer = serde_json::from_str(r#"{"header":{"revision":"7"}}"#).unwrap();
        assert_eq!(header_revision(&answer).unwrap(), 7);
        assert!(kvs(&answer).unwrap().is_empty());
        assert!(!flag(&answer, "succeeded"));
        let event = serde_json::from_str(r#"{"events":[{"kv":{"key":"YQ=="}}]}"#).unwrap();
        let put = Kv {
            key: b"a".to_vec(),
            value: Vec::new(),
            mod_revision: 0,
            lease: 0,
        };
        assert_eq!(events(&event).unwrap(), [Event::Put(put)]);
    }

    #[test]
    fn a_value_that_is_not_base64_is_refused_naming_its_key() {
        let answer = r#"{"kvs":[{"key":"L2xiLW1pby9h","value":"no!"}]}"#;
        let why = kvs(&serde_json::from_str(answer).unwrap()).unwrap_err();
        let Why::Malformed(why) = why else {
            panic!("{why:?}")
        };
        assert!(why.starts_with("key /lb-mio/a: value: "), "{why}");
        let answer = r#"{"kvs":[{"key":"L2xiLW1pby9h","mod_revision":"x"}]}"#;
        let why = kvs(&serde_json::from_str(answer).unwrap()).unwrap_err();
        assert!(
            format!("{why:?}").contains("key /lb-mio/a: mod_revision"),
            "{why:?}"
        );
    }
}
