//! The admin dead-letter routes held against the document: every status
//! each one documents, provoked (a module of `openapi.rs`, whose `Contract`
//! and `Api` it uses).

use jobgate_gateway::auth::{ADMIN_SCOPE, mint_hs256_with_scope};
use serde_json::json;

use super::{Api, Contract, EXPIRED_JOB, SECRET, UNKNOWN_JOB, expect_all, send};

const LIST: &str = "/v1/admin/dead-letters";
const ONE: &str = "/v1/admin/dead-letters/{id}";
const RETRY_ONE: &str = "/v1/admin/dead-letters/{id}/retry";
const RETRY_MANY: &str = "/v1/admin/dead-letters/retry";
const PURGE: &str = "/v1/admin/dead-letters/purge";
const DEAD: &str = "jobgate:dead:{default}";
const INDEX: &str = "jobgate:dead:{default}:jobs";

fn admin_token() -> String {
    mint_hs256_with_scope(SECRET, "ops", 3600, None, None, Some(ADMIN_SCOPE)).expect("token")
}

/// A dead letter for `job_id`, as a worker's `bury` leaves it.
async fn bury(api: &Api, job_id: &str) {
    let mut redis = api.redis().await;
    let id: String = redis::cmd("XADD")
        .arg(DEAD)
        .arg("*")
        .arg(&[
            ("job_id", job_id),
            ("kind", "echo"),
            ("reason", "max_attempts_exceeded"),
        ])
        .arg("error")
        .arg(r#"{"code":"max_attempts_exceeded","message":"attempt 1 of 1 failed: boom"}"#)
        .query_async(&mut redis)
        .await
        .expect("xadd");
    let _: i64 = redis::cmd("HSET")
        .arg(INDEX)
        .arg(job_id)
        .arg(id)
        .query_async(&mut redis)
        .await
        .expect("hset");
}

/// Every answer but 503: a failed job (re-run), a completed one (409), one
/// whose record is gone (410), then Redis keys of the wrong type (500).
pub(super) async fn dead_letters(api: &mut Api, contract: &mut Contract) {
    let admin = admin_token();
    let as_admin = |method: reqwest::Method, path: &str| {
        api.http
            .request(method, api.gateway.url(path))
            .bearer_auth(&admin)
    };
    let get = |path: &str| as_admin(reqwest::Method::GET, path);
    let post = |path: &str| as_admin(reqwest::Method::POST, path);
    let delete = |path: &str| as_admin(reqwest::Method::DELETE, path);
    let anonymous =
        |method: reqwest::Method, path: &str| api.http.request(method, api.gateway.url(path));
    let user = |method: reqwest::Method, path: &str| {
        api.http
            .request(method, api.gateway.url(path))
            .bearer_auth(&api.bearer)
    };

    let failed = api.submit(contract).await;
    let completed = api.submit(contract).await;
    assert_eq!(api.driver.start(&failed).await.expect("start"), "ok");
    let reply = api
        .driver
        .op(&failed, &["fail", "1", "boom", "it broke"])
        .await;
    assert_eq!(reply.expect("fail"), "ok");
    assert_eq!(api.driver.start(&completed).await.expect("start"), "ok");
    assert_eq!(
        api.driver
            .complete(&completed, 1, "1")
            .await
            .expect("complete"),
        "ok"
    );
    for job_id in [failed.as_str(), completed.as_str(), UNKNOWN_JOB] {
        bury(api, job_id).await;
    }

    let page = send(get(&format!("{LIST}?limit=1"))).await;
    let body = contract.check("get", LIST, &page);
    assert_eq!(page.status, 200, "{body}");
    assert_eq!(body["items"][0]["job_id"], failed.as_str());
    assert_eq!(body["items"][0]["owner"], "alice");
    let cursor = body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let next = format!("{LIST}?queue=default&limit=5&cursor={cursor}");
    let big = json!({"queue": "x".repeat(3 << 20)});
    let cases = vec![
        (get(LIST), 200, None),
        (get(&next), 200, None),
        (
            get(&format!("{LIST}?limit=0")),
            422,
            Some("invalid_request"),
        ),
        (
            get(&format!("{LIST}?cursor=nope")),
            422,
            Some("invalid_request"),
        ),
        (
            get(&format!("{LIST}?queue=a%7Bb%7D")),
            422,
            Some("invalid_request"),
        ),
        (
            get(&format!("{LIST}?colour=red")),
            422,
            Some("invalid_request"),
        ),
        (
            anonymous(reqwest::Method::GET, LIST),
            401,
            Some("unauthorized"),
        ),
        (user(reqwest::Method::GET, LIST), 403, Some("forbidden")),
    ];
    expect_all(contract, "get", LIST, cases).await;

    let path = |job_id: &str| format!("/v1/admin/dead-letters/{job_id}");
    let cases = vec![
        (get(&path(&failed)), 200, None),
        (get(&path("not-a-job")), 400, Some("invalid_job_id")),
        (get(&path("%FF")), 422, Some("invalid_request")),
        (get(&path(EXPIRED_JOB)), 404, Some("not_found")),
        (anonymous(reqwest::Method::GET, &path(&failed)), 401, None),
        (
            user(reqwest::Method::GET, &path(&failed)),
            403,
            Some("forbidden"),
        ),
    ];
    expect_all(contract, "get", ONE, cases).await;

    let retry = |job_id: &str| format!("/v1/admin/dead-letters/{job_id}/retry");
    let cases = vec![
        (post(&retry(&failed)), 202, None),
        (post(&retry(&failed)), 404, Some("not_found")),
        (post(&retry(&completed)), 409, Some("not_retryable")),
        (post(&retry(UNKNOWN_JOB)), 410, Some("history_expired")),
        (post(&retry("not-a-job")), 400, Some("invalid_job_id")),
        (post(&retry("%FF")), 422, Some("invalid_request")),
        (anonymous(reqwest::Method::POST, &retry(&failed)), 401, None),
        (
            user(reqwest::Method::POST, &retry(&failed)),
            403,
            Some("forbidden"),
        ),
    ];
    expect_all(contract, "post", RETRY_ONE, cases).await;
    // Re-run (no worker here takes it): queued again, and queued jobs do not
    // expire; its entry is back in the queue.
    let mut redis = api.redis().await;
    for key in [
        format!("jobgate:job:{{{failed}}}"),
        format!("jobgate:events:{{{failed}}}"),
    ] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("ttl");
        assert_eq!(ttl, -1, "{key} no longer expires");
    }
    let (status, finished_at): (String, Option<String>) = redis::cmd("HMGET")
        .arg(format!("jobgate:job:{{{failed}}}"))
        .arg("status")
        .arg("finished_at")
        .query_async(&mut redis)
        .await
        .expect("hmget");
    assert_eq!((status.as_str(), finished_at), ("queued", None));
    let record: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("jobgate:job:{{{failed}}}"))
        .query_async(&mut redis)
        .await
        .expect("hgetall");
    assert_eq!(record["attempt_base"], "1");
    assert_eq!(
        record["max_attempts"], "4",
        "a fresh budget of the submitted 3"
    );
    jobgate_testkit::Schemas::load().assert_valid("job_record", &json!(record));
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("jobgate:queue:{default}:normal")
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .expect("xrange");
    assert!(
        entries
            .iter()
            .any(|(_, f)| f.get("job_id") == Some(&failed)),
        "the job's entry is back in its queue: {entries:?}"
    );

    for (route, empty_status) in [(RETRY_MANY, 200), (PURGE, 200)] {
        let cases = vec![
            (
                post(route).json(&json!({"queue": "default"})),
                empty_status,
                None,
            ),
            (
                post(route)
                    .header("content-type", "application/json")
                    .body("{"),
                400,
                Some("invalid_json"),
            ),
            (post(route).json(&big), 413, Some("payload_too_large")),
            (post(route).body("{}"), 415, Some("unsupported_media_type")),
            (
                post(route).json(&json!({"limit": 0})),
                422,
                Some("invalid_request"),
            ),
            (
                anonymous(reqwest::Method::POST, route).json(&json!({})),
                401,
                None,
            ),
            (
                user(reqwest::Method::POST, route).json(&json!({})),
                403,
                Some("forbidden"),
            ),
        ];
        expect_all(contract, "post", route, cases).await;
    }

    bury(api, &completed).await;
    let cases = vec![
        (delete(&path(&completed)), 204, None),
        (delete(&path(&completed)), 404, Some("not_found")),
        (delete(&path("not-a-job")), 400, Some("invalid_job_id")),
        (delete(&path("%FF")), 422, Some("invalid_request")),
        (
            anonymous(reqwest::Method::DELETE, &path(&completed)),
            401,
            None,
        ),
        (
            user(reqwest::Method::DELETE, &path(&completed)),
            403,
            Some("forbidden"),
        ),
    ];
    expect_all(contract, "delete", ONE, cases).await;

    // Keys of the wrong type: a generic 500 from every route.
    let mut redis = api.redis().await;
    for key in [DEAD, INDEX] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("not a stream")
            .query_async(&mut redis)
            .await
            .expect("set");
    }
    let cases = [
        ("get", LIST, get(LIST)),
        ("get", ONE, get(&path(&failed))),
        ("delete", ONE, delete(&path(&failed))),
        ("post", RETRY_ONE, post(&retry(&failed))),
        ("post", RETRY_MANY, post(RETRY_MANY).json(&json!({}))),
        ("post", PURGE, post(PURGE).json(&json!({}))),
    ];
    for (method, route, request) in cases {
        let answer = send(request).await;
        let body = contract.check(method, route, &answer);
        assert_eq!(answer.status, 500, "{method} {route}: {body}");
        assert_eq!(
            body,
            json!({"code": "internal", "message": "internal error"})
        );
    }
    let _: () = redis::cmd("DEL")
        .arg(DEAD)
        .arg(INDEX)
        .query_async(&mut redis)
        .await
        .expect("del");
}

/// With Redis down (after `redis_down` killed it): 503 from every route.
pub(super) async fn dead_letters_redis_down(api: &Api, contract: &mut Contract) {
    let admin = admin_token();
    let request = |method: reqwest::Method, path: &str| {
        api.http
            .request(method, api.gateway.url(path))
            .bearer_auth(&admin)
            .timeout(std::time::Duration::from_secs(20))
    };
    let one = format!("/v1/admin/dead-letters/{UNKNOWN_JOB}");
    let cases = [
        ("get", LIST, request(reqwest::Method::GET, LIST)),
        ("get", ONE, request(reqwest::Method::GET, &one)),
        ("delete", ONE, request(reqwest::Method::DELETE, &one)),
        (
            "post",
            RETRY_ONE,
            request(reqwest::Method::POST, &format!("{one}/retry")),
        ),
        (
            "post",
            RETRY_MANY,
            request(reqwest::Method::POST, RETRY_MANY).json(&json!({})),
        ),
        (
            "post",
            PURGE,
            request(reqwest::Method::POST, PURGE).json(&json!({})),
        ),
    ];
    for (method, route, request) in cases {
        let answer = send(request).await;
        let body = contract.check(method, route, &answer);
        assert_eq!(answer.status, 503, "{method} {route}: {body}");
        assert_eq!(body["code"], "redis_unavailable", "{method} {route}");
    }
}
