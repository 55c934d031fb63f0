//! The job record hash (`HGETALL jobgate:job:{id}`) decoded by
//! `JobRecord::from_fields`. The input is one field per line, `name=value`
//! (split at the first `=`), the shape of the seeds in corpus/job_record/.
//! Decoding must never panic; a decoded record's snapshot must serialize to
//! JSON (it is what `GET /v1/jobs/{id}` answers) and keep its job id.
//! Progress, result and error are a worker's JSON kept verbatim, numbers
//! in their own spelling whatever their magnitude (`1e4736` too), so the
//! check is JSON's syntax, not what fits in an `f64`.
#![no_main]

use std::collections::HashMap;

use jobgate_store::JobRecord;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = HashMap::new();
    for line in text.split('\n') {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        fields.insert(name.to_owned(), value.to_owned());
    }
    if let Ok(Some(record)) = JobRecord::from_fields(fields) {
        let json = serde_json::to_string(&record.snapshot).expect("a snapshot serializes");
        let members: HashMap<String, Box<RawValue>> =
            serde_json::from_str(&json).expect("the snapshot is a JSON object");
        let job_id = members.get("job_id").expect("the snapshot has a job_id");
        assert_eq!(job_id.get(), format!("\"{}\"", record.snapshot.job_id));
        assert!(!record.owner.is_empty());
    }
});
