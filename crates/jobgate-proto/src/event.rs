//! Job events as the gateway sees them: opaque JSON, plus the few fields it
//! needs to order, de-duplicate and end streams.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The epoch of a job's events until a failover makes it start another
/// (and of every event of protocol 1, which carried none).
pub const FIRST_EPOCH: u64 = 1;

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
    /// The job's epoch when the event was written; an event without one
    /// (written by protocol 1) is of the first epoch.
    #[serde(default = "first_epoch")]
    pub epoch: u64,
    pub event: EventType,
    pub ts: u64,
}

pub(crate) fn first_epoch() -> u64 {
    FIRST_EPOCH
}

impl<'a> EventHeader<'a> {
    /// Reads the header of one event JSON. Unknown fields (`data`, …) are
    /// skipped, not parsed into values.
    pub fn parse(json: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// Where the event stands in its job's order.
    pub fn position(&self) -> EventPosition {
        EventPosition::new(self.epoch, self.seq)
    }
}

/// Where an event stands in its job's order: `(epoch, seq)`, compared in
/// that order. A failover can lose acknowledged writes and hand their `seq`
/// out again; the job then starts a new epoch, so a later event of a higher
/// epoch comes after every event of a lower one whatever its `seq`.
///
/// As text (SSE ids, `Last-Event-ID`) it is `<seq>` in the first epoch, so
/// clients that know nothing of epochs see no change, and `<epoch>:<seq>`
/// after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition {
    pub epoch: u64,
    pub seq: u64,
}

impl EventPosition {
    /// Before a job's first event.
    pub const START: Self = Self {
        epoch: FIRST_EPOCH,
        seq: 0,
    };

    pub const fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl fmt::Display for EventPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch == FIRST_EPOCH {
            write!(f, "{}", self.seq)
        } else {
            write!(f, "{}:{}", self.epoch, self.seq)
        }
    }
}

/// The text is neither `<seq>` nor `<epoch>:<seq>` (integers, epoch ≥ 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEventPosition;

impl fmt::Display for InvalidEventPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected <seq> or <epoch>:<seq> (non-negative integers, epoch at least 1)")
    }
}

impl std::error::Error for InvalidEventPosition {}

impl FromStr for EventPosition {
    type Err = InvalidEventPosition;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidEventPosition);
            }
            part.parse::<u64>().map_err(|_| InvalidEventPosition)
        };
        match text.split_once(':') {
            None => Ok(Self::new(FIRST_EPOCH, number(text)?)),
            Some((epoch, seq)) => {
                let epoch = number(epoch)?;
                if epoch < FIRST_EPOCH {
                    return Err(InvalidEventPosition);
                }
                Ok(Self::new(epoch, number(seq)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_header_of_an_event() {
        let json = br#"{"type":"event","job_id":"0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b","seq":3,"epoch":2,"event":"completed","data":{"result":{"x":[1,2]}},"ts":1796000000123,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#;
        let header = EventHeader::parse(json).expect("valid event");
        assert_eq!(header.seq, 3);
        assert_eq!(header.epoch, 2);
        assert_eq!(header.position(), EventPosition::new(2, 3));
        assert_eq!(header.event, EventType::Completed);
        assert!(header.event.is_terminal());
        assert_eq!(header.ts, 1_796_000_000_123);
    }

    #[test]
    fn an_event_without_an_epoch_is_of_the_first() {
        let json = br#"{"job_id":"a","seq":4,"event":"progress","ts":1}"#;
        let header = EventHeader::parse(json).expect("valid event");
        assert_eq!(header.epoch, FIRST_EPOCH);
    }

    #[test]
    fn rejects_an_unknown_event_type() {
        let json = br#"{"job_id":"a","seq":1,"event":"exploded","ts":1}"#;
        assert!(EventHeader::parse(json).is_err());
    }

    #[test]
    fn a_higher_epoch_comes_after_any_seq_of_a_lower_one() {
        assert!(EventPosition::new(2, 3) > EventPosition::new(1, 9));
        assert!(EventPosition::new(1, 9) > EventPosition::new(1, 8));
        assert!(EventPosition::START < EventPosition::new(1, 1));
    }

    #[test]
    fn positions_are_written_as_the_seq_in_the_first_epoch_only() {
        assert_eq!(EventPosition::new(1, 7).to_string(), "7");
        assert_eq!(EventPosition::new(3, 7).to_string(), "3:7");
        for text in ["7", "0", "3:7", "1:7"] {
            let position: EventPosition = text.parse().expect(text);
            let back = position.to_string();
            assert_eq!(back.parse::<EventPosition>(), Ok(position), "{text}");
        }
        assert_eq!("1:7".parse(), Ok(EventPosition::new(1, 7)));
        for bad in ["", "x", "-1", "0:4", "2:", ":4", "1:2:3", " 4", "4.0", "+4"] {
            assert_eq!(
                bad.parse::<EventPosition>(),
                Err(InvalidEventPosition),
                "{bad:?}"
            );
        }
    }
}
