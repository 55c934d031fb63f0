//! Real clients over real sockets: a WebSocket session and an SSE stream.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket session with the gateway.
#[derive(Debug)]
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server chose (`Sec-WebSocket-Protocol`).
    pub protocol: Option<String>,
}

impl WsClient {
    /// A session that offers no subprotocol, as clients older than
    /// `jobgate.v1` open it.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_offering(url, &[]).await
    }

    /// A session that offers `protocols` (`Sec-WebSocket-Protocol`), e.g.
    /// `["jobgate.v1"]`, as `new WebSocket(url, protocols)` does.
    pub async fn connect_offering(url: &str, protocols: &[&str]) -> anyhow::Result<Self> {
        let mut request = url.into_client_request().context("ws url")?;
        if !protocols.is_empty() {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&protocols.join(", ")).context("protocols")?,
            );
        }
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .context("ws connect")?;
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|p| p.to_str().ok())
            .map(str::to_owned);
        Ok(Self { socket, protocol })
    }

    pub async fn send(&mut self, message: Value) -> anyhow::Result<()> {
        self.socket.send(Message::text(message.to_string())).await?;
        Ok(())
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.socket.send(Message::text(text.to_owned())).await?;
        Ok(())
    }

    /// The next JSON text frame (pings are answered, not returned).
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<Value> {
        loop {
            let frame = tokio::time::timeout(within, self.socket.next())
                .await
                .map_err(|_| anyhow!("no frame within {within:?}"))?
                .ok_or_else(|| anyhow!("the session ended"))??;
            match frame {
                Message::Text(text) => return Ok(serde_json::from_str(&text)?),
                Message::Close(frame) => bail!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Reads until the close frame and returns it.
    pub async fn closed(&mut self, within: Duration) -> anyhow::Result<Option<CloseFrame>> {
        Ok(self.frames_until_close(within).await?.1)
    }

    /// Every JSON text frame until the close frame, and the close frame
    /// (`None` when the socket ended without one).
    pub async fn frames_until_close(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<(Vec<Value>, Option<CloseFrame>)> {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| anyhow!("not closed within {within:?}; frames: {frames:?}"))?;
            match frame {
                Some(Ok(Message::Text(text))) => frames.push(serde_json::from_str(&text)?),
                Some(Ok(Message::Close(close))) => return Ok((frames, close)),
                Some(Ok(_)) => continue,
                Some(Err(error)) => bail!("the socket failed before a close frame: {error}"),
                None => return Ok((frames, None)),
            }
        }
    }

    /// Submits a job and returns the `accepted` frame.
    pub async fn submit(&mut self, request_id: &str, job: Value) -> anyhow::Result<Value> {
        self.send(serde_json::json!({"type": "submit", "request_id": request_id, "job": job}))
            .await?;
        let reply = self.next(Duration::from_secs(10)).await?;
        if reply["type"] != "accepted" {
            bail!("expected accepted, got {reply}");
        }
        Ok(reply)
    }

    /// Collects every frame until (and with) the first `event` frame of
    /// type `event`, e.g. `started`.
    pub async fn frames_until_event(
        &mut self,
        event: &str,
        within: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self
                .next(left)
                .await
                .with_context(|| format!("frames so far: {frames:?}"))?;
            let found = frame["event"] == event;
            frames.push(frame);
            if found {
                return Ok(frames);
            }
        }
    }

    /// Collects `event` frames of `job_id` until its terminal event.
    pub async fn events_until_terminal(
        &mut self,
        job_id: &str,
        within: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self
                .next(left)
                .await
                .with_context(|| format!("events so far: {events:?}"))?;
            if frame["type"] == "event" && frame["job_id"] == job_id {
                let terminal = matches!(
                    frame["event"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                );
                events.push(frame);
                if terminal {
                    return Ok(events);
                }
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// An SSE stream, parsed as the EventSource spec says (fields, blank-line
/// dispatch, comments ignored).
#[derive(Debug)]
pub struct SseClient {
    pub status: reqwest::StatusCode,
    response: Option<reqwest::Response>,
    buffer: BytesMut,
}

impl SseClient {
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> anyhow::Result<Self> {
        let mut request = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await?;
        Ok(Self {
            status: response.status(),
            response: Some(response),
            buffer: BytesMut::new(),
        })
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.take_event() {
                return Ok(Some(event));
            }
            let Some(response) = self.response.as_mut() else {
                return Ok(None);
            };
            let chunk = tokio::time::timeout_at(deadline, response.chunk())
                .await
                .map_err(|_| anyhow!("no event within {within:?}"))??;
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => {
                    self.response = None;
                    return Ok(self.take_event());
                }
            }
        }
    }

    /// Reads events until the stream ends.
    pub async fn collect(&mut self, within: Duration) -> anyhow::Result<Vec<SseEvent>> {
        let mut events = Vec::new();
        while let Some(event) = self.next(within).await? {
            events.push(event);
        }
        Ok(events)
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let text = std::str::from_utf8(&self.buffer).ok()?;
            let end = text.find("\n\n")?;
            let block = text[..end].to_owned();
            let _ = self.buffer.split_to(end + 2);
            let mut event = SseEvent {
                id: None,
                event: "message".into(),
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = value.to_owned(),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data {
                return Some(event);
            }
        }
    }
}
