//! WebSocket session frames (`GET /v1/ws`): JSON text frames with a `type`.
//!
//! A client that offers the subprotocol [`SUBPROTOCOL`] gets
//! [`ServerMessage::Hello`] as the session's first frame,
//! [`ServerMessage::AuthOk`] after each accepted `auth` and
//! [`ServerMessage::Subscribed`] in answer to each `subscribe`; a client that
//! offers none gets none of them (the frames of the protocol before them).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::batch::SubmitBatchFrame;
use crate::{ErrorCode, EventPosition, FIRST_EPOCH, JobId, JobStatus, SubmitRequest};

/// The WebSocket subprotocol (`Sec-WebSocket-Protocol`) of sessions that
/// get `hello`, `auth_ok` and `subscribed`.
pub const SUBPROTOCOL: &str = "jobgate.v1";

/// A frame from the client.
#[derive(Debug, Clone)]
pub enum ClientMessage {
    /// Submit a job; the session is subscribed to it.
    Submit(SubmitFrame),
    /// Submit many jobs; each is answered (and watched) as a `submit` would
    /// be, its answer carrying its `index` in `jobs`.
    SubmitBatch(SubmitBatchFrame),
    /// Watch a job: its history after `after` (default: all of it), then
    /// live. The frame's `after` and `after_epoch` (default 1).
    Subscribe {
        job_id: JobId,
        after: EventPosition,
    },
    Unsubscribe {
        job_id: JobId,
    },
    Cancel {
        job_id: JobId,
        request_id: Option<String>,
    },
    /// A fresh token before the current one expires.
    Auth {
        token: String,
        request_id: Option<String>,
    },
    Ping,
}

/// `{"type":"submit", …}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitFrame {
    #[serde(rename = "type")]
    _type: String,
    pub request_id: String,
    pub job: SubmitRequest,
    #[serde(default)]
    pub traceparent: Option<String>,
    #[serde(default)]
    pub tracestate: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

// The other frames, parsed with their `type` so that unknown fields are
// refused. (serde's internally tagged enums cannot hold the verbatim
// `params` of a submit, hence one struct per frame.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFrame {
    #[serde(rename = "type")]
    _type: String,
    job_id: String,
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    after_epoch: Option<u64>,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFrame {
    #[serde(rename = "type")]
    _type: String,
    token: String,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingFrame {
    #[serde(rename = "type")]
    _type: String,
}

/// Why a frame could not be understood; answered with an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub request_id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

impl ClientMessage {
    /// Parses one text frame, telling a frame that is not JSON
    /// (`invalid_json`), one with no known `type` (`invalid_message`) and one
    /// whose fields are wrong (`invalid_request`) apart, and keeping the
    /// `request_id` when there is one so the client can match the error.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| FrameError {
            request_id: None,
            code: ErrorCode::InvalidJson,
            message: format!("the frame is not JSON: {e}"),
        })?;
        let request_id = value
            .get("request_id")
            .and_then(|id| id.as_str())
            .map(str::to_owned);
        let fail = |code, message: String| FrameError {
            request_id: request_id.clone(),
            code,
            message,
        };
        let Some(object) = value.as_object() else {
            return Err(fail(
                ErrorCode::InvalidJson,
                "the frame must be a JSON object".into(),
            ));
        };
        let kind = match object.get("type").and_then(|t| t.as_str()) {
            Some(kind) => kind,
            None => {
                return Err(fail(
                    ErrorCode::InvalidMessage,
                    "the frame has no string field \"type\"".into(),
                ));
            }
        };
        let invalid = |e: serde_json::Error| fail(ErrorCode::InvalidRequest, e.to_string());
        // Parse from the text, not the Value, so `params` keeps its exact spelling.
        let message = match kind {
            "submit" => {
                let frame: SubmitFrame = serde_json::from_str(text).map_err(invalid)?;
                frame
                    .job
                    .validate()
                    .map_err(|e| fail(ErrorCode::InvalidRequest, format!("job.{e}")))?;
                Self::Submit(frame)
            }
            // Each item is read on its own when it is submitted, so one bad
            // item refuses only itself.
            "submit_batch" => {
                let frame: SubmitBatchFrame = serde_json::from_str(text).map_err(invalid)?;
                if frame.jobs.is_empty() {
                    return Err(fail(
                        ErrorCode::InvalidRequest,
                        "jobs must hold at least one job".into(),
                    ));
                }
                Self::SubmitBatch(frame)
            }
            "subscribe" | "unsubscribe" | "cancel" => {
                let frame: JobFrame = serde_json::from_str(text).map_err(invalid)?;
                let position_field = frame
                    .after
                    .is_some()
                    .then_some("after")
                    .or(frame.after_epoch.is_some().then_some("after_epoch"));
                let misplaced = match kind {
                    "subscribe" => frame.request_id.is_some().then_some("request_id"),
                    "unsubscribe" => (frame.request_id.is_some())
                        .then_some("request_id")
                        .or(position_field),
                    _ => position_field,
                };
                if let Some(field) = misplaced {
                    return Err(fail(
                        ErrorCode::InvalidRequest,
                        format!("unknown field `{field}` in a {kind} message"),
                    ));
                }
                let job_id: JobId = frame.job_id.parse().map_err(|_| {
                    fail(
                        ErrorCode::InvalidJobId,
                        "job_id must be a lower-case hyphenated UUID".into(),
                    )
                })?;
                match kind {
                    "subscribe" => {
                        let epoch = frame.after_epoch.unwrap_or(FIRST_EPOCH);
                        if epoch < FIRST_EPOCH {
                            return Err(fail(
                                ErrorCode::InvalidRequest,
                                "after_epoch must be at least 1".into(),
                            ));
                        }
                        Self::Subscribe {
                            job_id,
                            after: EventPosition::new(epoch, frame.after.unwrap_or(0)),
                        }
                    }
                    "unsubscribe" => Self::Unsubscribe { job_id },
                    _ => Self::Cancel {
                        job_id,
                        request_id: frame.request_id,
                    },
                }
            }
            "auth" => {
                let frame: AuthFrame = serde_json::from_str(text).map_err(invalid)?;
                if frame.token.is_empty() {
                    return Err(fail(
                        ErrorCode::InvalidRequest,
                        "token must not be empty".into(),
                    ));
                }
                Self::Auth {
                    token: frame.token,
                    request_id: frame.request_id,
                }
            }
            "ping" => {
                let _: PingFrame = serde_json::from_str(text).map_err(invalid)?;
                Self::Ping
            }
            other => {
                return Err(fail(
                    ErrorCode::InvalidMessage,
                    format!(
                        "unknown message type {other:?}; expected submit, submit_batch, \
                         subscribe, unsubscribe, cancel, auth or ping"
                    ),
                ));
            }
        };
        Ok(message)
    }
}

/// A session's limits, as `hello` tells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// Jobs one session may watch at once.
    pub max_subscriptions: usize,
    /// Messages a client may send per second (more are dropped with
    /// `rate_limited`).
    pub messages_per_s: u32,
    /// The largest frame the gateway reads; a larger one ends the session at
    /// once, without a close code.
    pub max_message_bytes: usize,
    /// Frames the gateway holds for a client that does not read; one more
    /// closes the session (4008).
    pub outbound_queue: usize,
}

/// A frame from the server, other than events (which are forwarded as the
/// event JSON itself, whose `type` is `"event"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Accepted {
        request_id: String,
        /// The job's place in a `submit_batch`'s `jobs`; absent for a `submit`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        index: Option<usize>,
        job_id: JobId,
        trace_id: String,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        request_id: Option<String>,
        /// The job's place in a `submit_batch`'s `jobs`, when the error is
        /// that job's alone.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        index: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        job_id: Option<String>,
        code: ErrorCode,
        message: String,
        /// The offending field as a JSON Pointer into the job's params,
        /// for `invalid_params`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        field: Option<String>,
    },
    Pong,
    /// The first frame of a [`SUBPROTOCOL`] session: what the client sizes
    /// its timers and its traffic by.
    Hello {
        /// [`SUBPROTOCOL`].
        protocol: String,
        /// This session's id (a UUID), for logs on both sides.
        session_id: String,
        /// How often the client should send `ping` (the gateway's own
        /// WebSocket ping interval).
        ping_interval_ms: u64,
        /// A client that receives no frame at all for this long should treat
        /// the connection as dead.
        ping_timeout_ms: u64,
        /// Until the session's token expires (relative, so a skewed client
        /// clock does not matter); `null` when it does not expire.
        token_expires_in_ms: Option<u64>,
        limits: SessionLimits,
    },
    /// The answer to an accepted `auth` on a [`SUBPROTOCOL`] session.
    AuthOk {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        request_id: Option<String>,
        /// Until the new token expires; `null` when it does not.
        token_expires_in_ms: Option<u64>,
    },
    /// The answer to a `subscribe` on a [`SUBPROTOCOL`] session, before the
    /// events it replays: the job's status and its last event's position
    /// when the watch started. A terminal `status` at or before the
    /// subscribe's `after` means nothing more comes for it.
    Subscribed {
        job_id: JobId,
        status: JobStatus,
        epoch: u64,
        seq: u64,
    },
    /// The events after `after` were cut from the history; `snapshot` is the
    /// job now and the events from `first_seq` on follow.
    HistoryTruncated {
        job_id: JobId,
        after: u64,
        first_seq: u64,
        snapshot: Box<RawValue>,
    },
}

impl ServerMessage {
    pub fn error(
        request_id: Option<String>,
        job_id: Option<String>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Self::Error {
            request_id,
            index: None,
            job_id,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"could not encode a reply"}"#.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_client_message() {
        for text in [
            r#"{"type":"submit","request_id":"r1","job":{"kind":"echo","params":{"x":1}}}"#,
            r#"{"type":"subscribe","job_id":"0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b","after":3}"#,
            r#"{"type":"unsubscribe","job_id":"0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b"}"#,
            r#"{"type":"cancel","job_id":"0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b"}"#,
            r#"{"type":"auth","token":"t"}"#,
            r#"{"type":"auth","token":"t","request_id":"a1"}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"submit_batch","request_id":"b1","jobs":[{"job":{"kind":"echo","params":{}}},7]}"#,
        ] {
            assert!(ClientMessage::parse(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn classifies_bad_frames() {
        let code = |text| ClientMessage::parse(text).map(|_| ()).map_err(|e| e.code);
        assert_eq!(code("{nope"), Err(ErrorCode::InvalidJson));
        assert_eq!(code("[1]"), Err(ErrorCode::InvalidJson));
        assert_eq!(code(r#"{"type":"launch"}"#), Err(ErrorCode::InvalidMessage));
        assert_eq!(code(r#"{"job_id":"x"}"#), Err(ErrorCode::InvalidMessage));
        assert_eq!(
            code(r#"{"type":"subscribe"}"#),
            Err(ErrorCode::InvalidRequest)
        );
        assert_eq!(
            code(r#"{"type":"submit","request_id":"r","job":{"kind":"echo","params":3}}"#),
            Err(ErrorCode::InvalidRequest)
        );
    }

    #[test]
    fn a_subscribe_names_where_to_resume_with_its_epoch() {
        let job = "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b";
        let after = |text: &str| match ClientMessage::parse(text) {
            Ok(ClientMessage::Subscribe { after, .. }) => Ok(after),
            Ok(other) => panic!("not a subscribe: {other:?}"),
            Err(error) => Err(error.code),
        };
        let frame = |fields: &str| format!(r#"{{"type":"subscribe","job_id":"{job}"{fields}}}"#);
        assert_eq!(after(&frame("")), Ok(EventPosition::START));
        assert_eq!(after(&frame(r#","after":4"#)), Ok(EventPosition::new(1, 4)));
        assert_eq!(
            after(&frame(r#","after":4,"after_epoch":2"#)),
            Ok(EventPosition::new(2, 4))
        );
        assert_eq!(
            after(&frame(r#","after":4,"after_epoch":0"#)),
            Err(ErrorCode::InvalidRequest)
        );
        assert_eq!(
            after(&frame(r#","after_epoch":-1"#)),
            Err(ErrorCode::InvalidRequest)
        );
        let unsubscribe = format!(r#"{{"type":"unsubscribe","job_id":"{job}","after_epoch":2}}"#);
        assert_eq!(
            ClientMessage::parse(&unsubscribe)
                .map(|_| ())
                .map_err(|e| e.code),
            Err(ErrorCode::InvalidRequest)
        );
    }

    #[test]
    fn an_auth_carries_its_request_id_and_keeps_it_when_refused() {
        match ClientMessage::parse(r#"{"type":"auth","token":"t","request_id":"a1"}"#) {
            Ok(ClientMessage::Auth { token, request_id }) => {
                assert_eq!((token.as_str(), request_id.as_deref()), ("t", Some("a1")));
            }
            other => panic!("not an auth: {other:?}"),
        }
        let err = ClientMessage::parse(r#"{"type":"auth","token":"","request_id":"a2"}"#)
            .expect_err("empty token");
        assert_eq!(err.request_id.as_deref(), Some("a2"));
    }

    #[test]
    fn hello_and_auth_ok_spell_every_field() {
        let hello = ServerMessage::Hello {
            protocol: SUBPROTOCOL.into(),
            session_id: "s".into(),
            ping_interval_ms: 15_000,
            ping_timeout_ms: 30_000,
            token_expires_in_ms: None,
            limits: SessionLimits {
                max_subscriptions: 1000,
                messages_per_s: 50,
                max_message_bytes: 1_048_576,
                outbound_queue: 1024,
            },
        };
        assert_eq!(
            hello.to_json(),
            r#"{"type":"hello","protocol":"jobgate.v1","session_id":"s","ping_interval_ms":15000,"ping_timeout_ms":30000,"token_expires_in_ms":null,"limits":{"max_subscriptions":1000,"messages_per_s":50,"max_message_bytes":1048576,"outbound_queue":1024}}"#
        );
        let auth_ok = ServerMessage::AuthOk {
            request_id: None,
            token_expires_in_ms: Some(5),
        };
        assert_eq!(
            auth_ok.to_json(),
            r#"{"type":"auth_ok","token_expires_in_ms":5}"#
        );
    }

    #[test]
    fn subscribed_spells_every_field() {
        let subscribed = ServerMessage::Subscribed {
            job_id: "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b".parse().expect("id"),
            status: JobStatus::Completed,
            epoch: 1,
            seq: 4,
        };
        assert_eq!(
            subscribed.to_json(),
            r#"{"type":"subscribed","job_id":"0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b","status":"completed","epoch":1,"seq":4}"#
        );
    }

    #[test]
    fn keeps_the_request_id_of_a_bad_submit() {
        let err = ClientMessage::parse(r#"{"type":"submit","request_id":"r7","job":{}}"#)
            .expect_err("missing kind");
        assert_eq!(err.request_id.as_deref(), Some("r7"));
    }
}
