//! Epochs, against a real Redis: a failover can lose acknowledged writes,
//! and the promoted node hands their seqs out again. Here a lost write is
//! made by hand the way a failover leaves it — the last event gone from the
//! history, the record's seq back by one, and the record last written under
//! another replication id — so the script's next write starts epoch 2 with
//! the lost seq. Watchers that saw the lost event get the new epoch's events
//! (WebSocket and SSE), and clients resuming from it are replayed from the
//! new epoch's first seq.

use std::collections::HashMap;
use std::time::Duration;

use jobgate_testkit::{EchoStack, JobDriver, SseClient, TestGateway, WsClient, event_position};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// A replication id no Redis runs under.
const ANOTHER_REPLID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c";

/// Undoes the job's last write as a failover would: the history loses its
/// last event, the record's seq goes back by one, and the record was last
/// written under another replication id.
async fn lose_the_last_write(driver: &mut JobDriver, job_id: &str) {
    let job = format!("jobgate:job:{{{job_id}}}");
    let events = format!("jobgate:events:{{{job_id}}}");
    let conn = driver.connection();
    let seq: u64 = redis::cmd("HGET")
        .arg(&job)
        .arg("seq")
        .query_async(conn)
        .await
        .expect("hget");
    let kept: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&events)
        .arg("-")
        .arg(format!("{}-0", seq - 1))
        .query_async(conn)
        .await
        .expect("xrange");
    // Rebuilt rather than trimmed, so the stream's last id is the last
    // kept entry's, as on a node that never had the lost one.
    let mut rebuild = redis::pipe();
    rebuild.atomic().cmd("DEL").arg(&events).ignore();
    for (id, fields) in &kept {
        rebuild
            .cmd("XADD")
            .arg(&events)
            .arg(id)
            .arg("e")
            .arg(&fields["e"])
            .ignore();
    }
    rebuild
        .cmd("HSET")
        .arg(&job)
        .arg("seq")
        .arg(seq - 1)
        .arg("replid")
        .arg(ANOTHER_REPLID)
        .ignore();
    let () = rebuild.query_async(conn).await.expect("rebuild");
}

/// After `queued` (1, 1), `started` (1, 2) and `progress` (1, 3):
/// (1, 3) is lost; `progress` (2, 3) and `completed` (2, 4) follow in
/// epoch 2.
async fn lose_it_and_finish(driver: &mut JobDriver, job_id: &str) {
    lose_the_last_write(driver, job_id).await;
    driver.progress_and_complete(job_id, r#"{"n":1}"#).await;
    assert_eq!(
        driver.history(job_id).await,
        [(1, 1), (1, 2), (2, 3), (2, 4)],
        "the script started epoch 2 at the lost seq"
    );
}

/// A WebSocket session subscribed with `frame`'s fields: the positions of
/// the events it gets until the job's terminal event.
async fn ws_positions(gateway: &TestGateway, job_id: &str, frame: Value) -> Vec<(u64, u64)> {
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("ws");
    let mut subscribe = json!({"type": "subscribe", "job_id": job_id});
    for (key, value) in frame.as_object().expect("fields") {
        subscribe[key] = value.clone();
    }
    ws.send(subscribe).await.expect("subscribe");
    let events = ws
        .events_until_terminal(job_id, WAIT)
        .await
        .expect("events");
    events.iter().map(event_position).collect()
}

/// An SSE job stream resumed from `last_event_id`: its status, and each
/// event's id and position.
async fn sse_resumed(
    gateway: &TestGateway,
    job_id: &str,
    last_event_id: &str,
) -> (u16, Vec<(String, (u64, u64))>) {
    let url = gateway.url(&format!("/v1/jobs/{job_id}/events"));
    let mut sse = SseClient::connect(&url, Some(last_event_id))
        .await
        .expect("sse");
    let status = sse.status.as_u16();
    let events = sse.collect(WAIT).await.expect("events");
    let events = events
        .iter()
        .map(|e| (e.id.clone().expect("an id"), event_position(&e.json())))
        .collect();
    (status, events)
}

#[tokio::test]
async fn watchers_that_saw_a_lost_write_get_the_new_epochs_events() {
    let mut h = EchoStack::start().await;
    let job_id = h.gateway.submit_echo().await;
    let mut ws = WsClient::connect(&h.gateway.ws_url()).await.expect("ws");
    ws.send(json!({"type": "subscribe", "job_id": job_id}))
        .await
        .expect("subscribe");
    let url = h.gateway.url(&format!("/v1/jobs/{job_id}/events"));
    let mut sse = SseClient::connect(&url, None).await.expect("sse");
    h.driver.start_and_progress(&job_id).await;
    // Both watchers hand out (1, 3) before it is lost.
    let frames = ws
        .frames_until_event("progress", WAIT)
        .await
        .expect("frames");
    let mut seen_by_ws: Vec<(u64, u64)> = frames
        .iter()
        .filter(|frame| frame["type"] == "event")
        .map(event_position)
        .collect();
    assert_eq!(seen_by_ws, [(1, 1), (1, 2), (1, 3)]);
    let mut first = Vec::new();
    while first.len() < 3 {
        first.push(sse.next(WAIT).await.expect("sse").expect("open"));
    }
    lose_it_and_finish(&mut h.driver, &job_id).await;
    let rest = ws
        .events_until_terminal(&job_id, WAIT)
        .await
        .expect("events");
    for event in &rest {
        h.schemas.assert_valid("event", event);
    }
    seen_by_ws.extend(rest.iter().map(event_position));
    assert_eq!(
        seen_by_ws,
        [(1, 1), (1, 2), (1, 3), (2, 3), (2, 4)],
        "(2, 3) is new although seq 3 was handed out"
    );

    first.extend(sse.collect(WAIT).await.expect("sse events"));
    let ids: Vec<&str> = first.iter().filter_map(|e| e.id.as_deref()).collect();
    assert_eq!(ids, ["1", "2", "3", "2:3", "2:4"]);
    let snapshot: Value = reqwest::get(h.gateway.url(&format!("/v1/jobs/{job_id}")))
        .await
        .expect("snapshot")
        .json()
        .await
        .expect("json");
    h.schemas.assert_valid("job_snapshot", &snapshot);
    assert_eq!(
        (snapshot["epoch"].as_u64(), snapshot["seq"].as_u64()),
        (Some(2), Some(4))
    );
}

#[tokio::test]
async fn a_client_resuming_from_a_lost_write_is_replayed_from_the_epochs_first_seq() {
    let mut h = EchoStack::start().await;
    let job_id = h.gateway.submit_echo().await;
    h.driver.start_and_progress(&job_id).await;
    lose_it_and_finish(&mut h.driver, &job_id).await;
    let gateway = &h.gateway;

    // It saw (1, 3), the lost event: replayed from epoch 2's first seq.
    assert_eq!(
        ws_positions(gateway, &job_id, json!({"after": 3})).await,
        [(2, 3), (2, 4)]
    );
    assert_eq!(
        ws_positions(gateway, &job_id, json!({"after": 3, "after_epoch": 1})).await,
        [(2, 3), (2, 4)]
    );
    // It saw (2, 3): only what follows.
    assert_eq!(
        ws_positions(gateway, &job_id, json!({"after": 3, "after_epoch": 2})).await,
        [(2, 4)]
    );
    // Behind the loss: the events of epoch 1 it missed, then epoch 2's.
    assert_eq!(
        ws_positions(gateway, &job_id, json!({"after": 1})).await,
        [(1, 2), (2, 3), (2, 4)]
    );

    let replayed = |events: &[(String, (u64, u64))]| {
        events.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()
    };
    let (status, events) = sse_resumed(gateway, &job_id, "3").await;
    assert_eq!(
        (status, replayed(&events)),
        (200, vec!["2:3".into(), "2:4".into()])
    );
    let (status, events) = sse_resumed(gateway, &job_id, "2:3").await;
    assert_eq!((status, replayed(&events)), (200, vec!["2:4".into()]));
    // (1, 4) never existed in epoch 2's order before (2, 3): not the end.
    let (status, events) = sse_resumed(gateway, &job_id, "4").await;
    assert_eq!(
        (status, replayed(&events)),
        (200, vec!["2:3".into(), "2:4".into()])
    );
    // Past the terminal event: nothing follows.
    let (status, events) = sse_resumed(gateway, &job_id, "2:4").await;
    assert_eq!((status, events.len()), (204, 0));

    // A resume point that is neither form is refused.
    let answer = reqwest::Client::new()
        .get(gateway.url(&format!("/v1/jobs/{job_id}/events")))
        .header("last-event-id", "0:3")
        .send()
        .await
        .expect("request");
    assert_eq!(answer.status(), 422);
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("ws");
    ws.send(json!({"type": "subscribe", "job_id": job_id, "after": 3, "after_epoch": 0}))
        .await
        .expect("subscribe");
    assert_eq!(
        ws.next(WAIT).await.expect("error")["code"],
        "invalid_request"
    );
}
