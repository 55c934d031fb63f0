//! Job events as the gateway sees them: opaque JSON, plus the few fields it
//! needs to order, de-duplicate and end streams.

use serde::{Deserialize, Serialize};

/// The type of a job event (`event` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Queued,
    Started,
    Progress,
    Retrying,
    Completed,
    Failed,
    Cancelled,
}

impl EventType {
    /// Whether no event can follow this one.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The name used on the wire and as the SSE `event:` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Started => "started",
            Self::Progress => "progress",
            Self::Retrying => "retrying",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The routing fields of an event JSON, read without touching `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct EventHeader<'a> {
    pub job_id: &'a str,
    pub seq: u64,
    pub event: EventType,
    pub ts: u64,
}

impl<'a> EventHeader<'a> {
    /// Reads the header of one event JSON. Unknown fields (`data`, …) are
    /// skipped, not parsed into values.
    pub fn parse(json: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_header_of_an_event() {
        let json = br#"{"type":"event","job_id":"0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b","seq":3,"event":"completed","data":{"result":{"x":[1,2]}},"ts":1796000000123,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#;
        let header = EventHeader::parse(json).expect("valid event");
        assert_eq!(header.seq, 3);
        assert_eq!(header.event, EventType::Completed);
        assert!(header.event.is_terminal());
        assert_eq!(header.ts, 1_796_000_000_123);
    }

    #[test]
    fn rejects_an_unknown_event_type() {
        let json = br#"{"job_id":"a","seq":1,"event":"exploded","ts":1}"#;
        assert!(EventHeader::parse(json).is_err());
    }
}
