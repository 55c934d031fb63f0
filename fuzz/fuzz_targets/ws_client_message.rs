//! WebSocket client frames: any text a client sends on `/v1/ws` goes through
//! `ClientMessage::parse`. It must never panic, must classify every bad frame
//! with one of the frame error codes (`invalid_json`, `invalid_message`,
//! `invalid_request`, `invalid_job_id`), and must never accept a `submit`
//! whose job does not validate. The error reply built from a bad frame must
//! be JSON.
#![no_main]

use jobgate_proto::ErrorCode;
use jobgate_proto::ws::{ClientMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The socket layer hands the session only valid UTF-8; the lossy
    // conversion lets every input reach the parser.
    let text = String::from_utf8_lossy(data);
    match ClientMessage::parse(&text) {
        Ok(ClientMessage::Submit(frame)) => {
            assert!(
                frame.job.validate().is_ok(),
                "an accepted submit must validate"
            );
        }
        Ok(_) => {}
        Err(error) => {
            assert!(
                matches!(
                    error.code,
                    ErrorCode::InvalidJson
                        | ErrorCode::InvalidMessage
                        | ErrorCode::InvalidRequest
                        | ErrorCode::InvalidJobId
                ),
                "unexpected frame error code {:?}",
                error.code
            );
            let reply = ServerMessage::error(error.request_id, None, error.code, error.message);
            let json: serde_json::Value =
                serde_json::from_str(&reply.to_json()).expect("an error reply is JSON");
            assert_eq!(json["type"], "error");
        }
    }
});
