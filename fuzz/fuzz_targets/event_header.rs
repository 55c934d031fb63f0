//! Event JSON as read back from a job's history stream or a pub/sub message:
//! `EventHeader::parse` reads the routing fields of bytes that came through
//! Redis. It must never panic, and what it accepts must be consistent.
#![no_main]

use jobgate_proto::EventHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = EventHeader::parse(data) {
        let name = header.event.as_str();
        assert!(!name.is_empty());
        let reparsed: jobgate_proto::EventType =
            serde_json::from_value(serde_json::Value::String(name.to_owned()))
                .expect("an event type's wire name parses back");
        assert_eq!(reparsed, header.event);
        assert_eq!(
            header.event.is_terminal(),
            matches!(name, "completed" | "failed" | "cancelled")
        );
    }
});
