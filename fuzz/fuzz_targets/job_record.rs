//! The job record hash (`HGETALL jobgate:job:{id}`) decoded by
//! `JobRecord::from_fields`. The input is one field per line, `name=value`
//! (split at the first `=`), the shape of the seeds in corpus/job_record/.
//! Decoding must never panic; a decoded record's snapshot must serialize to
//! JSON (it is what `GET /v1/jobs/{id}` answers) and keep its job id.
#![no_main]

use std::collections::HashMap;

use jobgate_store::JobRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = HashMap::new();
    for line in text.split('\n') {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        fields.insert(name.to_owned(), value.to_owned());
    }
    if let Ok(Some(record)) = JobRecord::from_fields(fields) {
        let json = serde_json::to_string(&record.snapshot).expect("a snapshot serializes");
        let value: serde_json::Value = serde_json::from_str(&json).expect("the snapshot is JSON");
        assert_eq!(value["job_id"], record.snapshot.job_id.to_string());
        assert!(!record.owner.is_empty());
    }
});
