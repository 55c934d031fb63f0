//! [`Published`]: one message as the hub hands it to every subscription of
//! its channel. The payload is shared, not copied, and a job event's header
//! (job id, `seq`, `epoch`, type, `ts`) is read from its JSON once per
//! message — by the first feed that needs it — and shared by every other
//! watcher, instead of once per watcher: with thousands of watchers of one
//! job the parse was paid thousands of times per event. Messages that are
//! not job events (the job ids on an owner's channel) are never parsed.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use jobgate_proto::{EventHeader, EventType, JobId};

/// A published message, cheap to clone (one reference count).
#[derive(Clone)]
pub struct Published(Arc<Inner>);

struct Inner {
    payload: Bytes,
    header: OnceLock<Option<LiveHeader>>,
}

/// What a feed needs of a job event to order and de-duplicate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveHeader {
    pub job_id: JobId,
    pub seq: u64,
    pub epoch: u64,
    pub event: EventType,
    pub ts: u64,
}

impl Published {
    pub fn new(payload: Bytes) -> Self {
        Self(Arc::new(Inner {
            payload,
            header: OnceLock::new(),
        }))
    }

    /// The message as Redis delivered it.
    pub fn payload(&self) -> &Bytes {
        &self.0.payload
    }

    /// The header of the job event this message is, read on the first call
    /// (by whichever watcher asks first) and kept; `None` when it is not a
    /// job event (logged once, when it is not even an event's JSON).
    pub fn event_header(&self) -> Option<&LiveHeader> {
        self.0
            .header
            .get_or_init(|| read_header(&self.0.payload))
            .as_ref()
    }
}

impl Deref for Published {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.payload
    }
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Published")
            .field(&String::from_utf8_lossy(&self.0.payload))
            .finish()
    }
}

fn read_header(json: &[u8]) -> Option<LiveHeader> {
    let Ok(header) = EventHeader::parse(json) else {
        tracing::warn!(payload = %String::from_utf8_lossy(json), "dropping a malformed event");
        return None;
    };
    Some(LiveHeader {
        job_id: header.job_id.parse().ok()?,
        seq: header.seq,
        epoch: header.epoch,
        event: header.event,
        ts: header.ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_read_once_and_shared_by_every_clone() {
        let id = JobId::new();
        let json = format!(
            r#"{{"type":"event","job_id":"{id}","seq":4,"epoch":2,"event":"progress","data":{{}},"ts":9}}"#
        );
        let published = Published::new(Bytes::from(json));
        let watcher = published.clone();
        let header = *published.event_header().expect("an event");
        assert_eq!(header.job_id, id);
        assert_eq!((header.seq, header.epoch, header.ts), (4, 2, 9));
        assert!(std::ptr::eq(
            published.event_header().expect("kept"),
            watcher.event_header().expect("shared")
        ));
        assert!(
            Published::new(Bytes::from_static(b"not json"))
                .event_header()
                .is_none()
        );
    }
}
