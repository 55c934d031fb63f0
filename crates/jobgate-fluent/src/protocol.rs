//! The client side of Fluentd's Forward protocol v1, as msgpack values.
//!
//! A batch is one msgpack array `[tag, entries, option]`: in Forward mode
//! `entries` is an array of `[time, record]`, in PackedForward mode it is a
//! binary holding those arrays back to back. `time` is an EventTime (ext type
//! 0, 8 bytes: seconds then nanoseconds, both big-endian u32). `option` is
//! `{"chunk": <unique base64 id>, "size": <number of entries>}`; the server
//! answers `{"ack": <chunk>}` once it has the batch.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rmpv::Value as Msgpack;
use serde_json::{Map, Value as Json};

use crate::config::Mode;

/// The msgpack ext type of an EventTime.
pub const EVENT_TIME_EXT_TYPE: i8 = 0;

/// A Forward-protocol timestamp: seconds since the epoch plus nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventTime {
    pub seconds: u32,
    pub nanoseconds: u32,
}

impl EventTime {
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Saturates at the ends of the u32 range (1970 and 2106).
    pub fn from_system_time(time: SystemTime) -> Self {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            seconds: u32::try_from(since_epoch.as_secs()).unwrap_or(u32::MAX),
            nanoseconds: since_epoch.subsec_nanos(),
        }
    }

    /// The 8 data bytes of the ext value.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut bytes = [0; 8];
        bytes[..4].copy_from_slice(&self.seconds.to_be_bytes());
        bytes[4..].copy_from_slice(&self.nanoseconds.to_be_bytes());
        bytes
    }

    fn to_msgpack(self) -> Msgpack {
        Msgpack::Ext(EVENT_TIME_EXT_TYPE, self.to_bytes().to_vec())
    }
}

/// One log record and the time it was logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: EventTime,
    pub record: Map<String, Json>,
}

/// A fresh chunk id: 16 random bytes in standard base64.
pub fn new_chunk_id() -> String {
    BASE64.encode(uuid::Uuid::new_v4().as_bytes())
}

/// Encodes `events` as one Forward-protocol message carrying `chunk_id`.
pub fn encode_batch(
    tag: &str,
    events: &[Event],
    mode: Mode,
    chunk_id: &str,
) -> Result<Vec<u8>, rmpv::encode::Error> {
    let entries = events.iter().map(|event| {
        Msgpack::Array(vec![
            event.time.to_msgpack(),
            json_map_to_msgpack(&event.record),
        ])
    });
    let entries = match mode {
        Mode::Forward => Msgpack::Array(entries.collect()),
        Mode::PackedForward => {
            let mut stream = Vec::new();
            for entry in entries {
                rmpv::encode::write_value(&mut stream, &entry)?;
            }
            Msgpack::Binary(stream)
        }
    };
    let option = Msgpack::Map(vec![
        (Msgpack::from("chunk"), Msgpack::from(chunk_id)),
        (Msgpack::from("size"), Msgpack::from(events.len() as u64)),
    ]);
    let message = Msgpack::Array(vec![Msgpack::from(tag), entries, option]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &message)?;
    Ok(bytes)
}

/// The chunk id acknowledged by a server response `{"ack": chunk}`.
pub fn acked_chunk(response: &Msgpack) -> Option<&str> {
    response
        .as_map()?
        .iter()
        .find(|(key, _)| key.as_str() == Some("ack"))?
        .1
        .as_str()
}

/// Decodes the first msgpack value in `bytes`, if it is complete: returns
/// the value and how many bytes it took, or `None` when more bytes are needed.
pub fn decode_prefix(bytes: &[u8]) -> Result<Option<(Msgpack, usize)>, rmpv::decode::Error> {
    let mut rest = bytes;
    match rmpv::decode::read_value(&mut rest) {
        Ok(value) => Ok(Some((value, bytes.len() - rest.len()))),
        Err(
            rmpv::decode::Error::InvalidMarkerRead(error)
            | rmpv::decode::Error::InvalidDataRead(error),
        ) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(error) => Err(error),
    }
}

fn json_map_to_msgpack(map: &Map<String, Json>) -> Msgpack {
    Msgpack::Map(
        map.iter()
            .map(|(key, value)| (Msgpack::from(key.as_str()), json_to_msgpack(value)))
            .collect(),
    )
}

fn json_to_msgpack(value: &Json) -> Msgpack {
    match value {
        Json::Null => Msgpack::Nil,
        Json::Bool(flag) => Msgpack::Boolean(*flag),
        Json::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                Msgpack::from(unsigned)
            } else if let Some(signed) = number.as_i64() {
                Msgpack::from(signed)
            } else {
                Msgpack::F64(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(text) => Msgpack::from(text.as_str()),
        Json::Array(items) => Msgpack::Array(items.iter().map(json_to_msgpack).collect()),
        Json::Object(map) => json_map_to_msgpack(map),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events() -> Vec<Event> {
        let record = |message: &str, n: i64| match json!({
            "message": message, "level": "info", "n": n, "ratio": 0.5,
            "ok": true, "nothing": null, "nested": {"list": [1, "two"]},
        }) {
            Json::Object(map) => map,
            _ => unreachable!("a json object literal"),
        };
        vec![
            Event {
                time: EventTime {
                    seconds: 1_795_814_645,
                    nanoseconds: 7_000_123,
                },
                record: record("first", -1),
            },
            Event {
                time: EventTime {
                    seconds: 1_795_814_646,
                    nanoseconds: 0,
                },
                record: record("second", 2),
            },
        ]
    }

    fn decode_all(bytes: &[u8]) -> Msgpack {
        let (value, used) = decode_prefix(bytes).expect("msgpack").expect("complete");
        assert_eq!(used, bytes.len(), "one value, nothing after it");
        value
    }

    /// Checks `[time, record]` against the event it came from.
    fn assert_entry(entry: &Msgpack, event: &Event) {
        let entry = entry.as_array().expect("entry is an array");
        assert_eq!(entry.len(), 2);
        let Msgpack::Ext(ext_type, data) = &entry[0] else {
            panic!("time is not an ext value: {:?}", entry[0]);
        };
        assert_eq!(*ext_type, 0, "EventTime is ext type 0");
        assert_eq!(data.len(), 8);
        assert_eq!(
            u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            event.time.seconds
        );
        assert_eq!(
            u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            event.time.nanoseconds
        );
        let record = entry[1].as_map().expect("record is a map");
        let message = record
            .iter()
            .find(|(key, _)| key.as_str() == Some("message"))
            .map(|(_, value)| value.as_str());
        assert_eq!(message, Some(event.record["message"].as_str()));
        let n = record
            .iter()
            .find(|(key, _)| key.as_str() == Some("n"))
            .and_then(|(_, value)| value.as_i64());
        assert_eq!(n, event.record["n"].as_i64());
        assert_eq!(record.len(), event.record.len());
    }

    fn assert_option(option: &Msgpack, chunk_id: &str, size: u64) {
        let option = option.as_map().expect("option is a map");
        let get = |name: &str| {
            option
                .iter()
                .find(|(key, _)| key.as_str() == Some(name))
                .map(|(_, value)| value.clone())
        };
        assert_eq!(get("chunk"), Some(Msgpack::from(chunk_id)));
        assert_eq!(get("size").and_then(|size| size.as_u64()), Some(size));
    }

    #[test]
    fn forward_mode_is_tag_entries_option() {
        let events = events();
        let bytes =
            encode_batch("jobgate.gateway", &events, Mode::Forward, "Y2h1bmsx").expect("encodes");
        // fixarray of 3, then a fixstr tag.
        assert_eq!(bytes[0], 0x93);
        let message = decode_all(&bytes);
        let parts = message.as_array().expect("message is an array");
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].as_str(), Some("jobgate.gateway"));
        let entries = parts[1].as_array().expect("entries is an array");
        assert_eq!(entries.len(), 2);
        for (entry, event) in entries.iter().zip(&events) {
            assert_entry(entry, event);
        }
        assert_option(&parts[2], "Y2h1bmsx", 2);
    }

    #[test]
    fn packed_forward_mode_is_a_binary_stream_of_entries() {
        let events = events();
        let bytes =
            encode_batch("jobgate.worker", &events, Mode::PackedForward, "abc=").expect("encodes");
        let message = decode_all(&bytes);
        let parts = message.as_array().expect("message is an array");
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].as_str(), Some("jobgate.worker"));
        let Msgpack::Binary(mut stream) = parts[1].clone() else {
            panic!("entries are not a binary: {:?}", parts[1]);
        };
        for event in &events {
            let (entry, used) = decode_prefix(&stream).expect("msgpack").expect("complete");
            assert_entry(&entry, event);
            stream.drain(..used);
        }
        assert!(stream.is_empty(), "no bytes after the last entry");
        assert_option(&parts[2], "abc=", 2);
    }

    #[test]
    fn event_time_is_fixext8_type_0() {
        let time = EventTime {
            seconds: 0x0102_0304,
            nanoseconds: 0x0506_0708,
        };
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &time.to_msgpack()).expect("encodes");
        assert_eq!(bytes, [0xd7, 0x00, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn chunk_ids_are_unique_base64() {
        let first = new_chunk_id();
        assert_ne!(first, new_chunk_id());
        assert_eq!(BASE64.decode(&first).expect("base64").len(), 16);
    }

    #[test]
    fn reads_the_ack_and_waits_for_complete_values() {
        let response = Msgpack::Map(vec![(Msgpack::from("ack"), Msgpack::from("abc="))]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &response).expect("encodes");
        assert!(
            decode_prefix(&bytes[..bytes.len() - 1])
                .expect("ok")
                .is_none()
        );
        let (value, used) = decode_prefix(&bytes).expect("ok").expect("complete");
        assert_eq!(used, bytes.len());
        assert_eq!(acked_chunk(&value), Some("abc="));
        assert_eq!(acked_chunk(&Msgpack::from("abc=")), None);
    }
}
