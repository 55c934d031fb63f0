//! `GET /v1/jobs` through the real app on a real Redis: newest first,
//! filters, pagination that holds while jobs arrive, expired jobs leaving
//! the listing and the owner's index, the index's bounds, bad queries that
//! read and write nothing, and owners who never see each other's jobs.

use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_gateway::auth::mint_hs256;
use jobgate_gateway::config::AuthMode;
use jobgate_testkit::{JobDriver, RedisServer, Schemas, TestGateway};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

struct Listing {
    redis: RedisServer,
    gateway: TestGateway,
    driver: JobDriver,
    http: reqwest::Client,
    schemas: Schemas,
}

fn token(owner: &str) -> String {
    mint_hs256(SECRET, owner, 3600, None, None).expect("token")
}

impl Listing {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let redis = RedisServer::start();
        let driver = JobDriver::with_kinds(&redis.url(), &["echo", "other"]).await;
        let mut config = Config::for_redis(redis.url());
        config.auth = Some(AuthMode::Jwt);
        config.jwt_secret = Some(SECRET.into());
        config.jwt_leeway_s = 0;
        adjust(&mut config);
        let gateway = TestGateway::start_with(config).await;
        Self {
            redis,
            gateway,
            driver,
            http: reqwest::Client::new(),
            schemas: Schemas::load(),
        }
    }

    /// Submits a job of `kind` as `owner`; its id.
    async fn submit(&self, owner: &str, kind: &str) -> String {
        let answer = self
            .http
            .post(self.gateway.url("/v1/jobs"))
            .bearer_auth(token(owner))
            .json(&json!({"kind": kind, "params": {}}))
            .send()
            .await
            .expect("submit");
        assert_eq!(answer.status(), 202);
        let body: Value = answer.json().await.expect("JSON");
        body["job_id"].as_str().expect("job_id").to_owned()
    }

    /// `GET /v1/jobs?<query>` as `owner`: the status and the body.
    async fn list(&self, owner: &str, query: &str) -> (u16, Value) {
        let answer = self
            .http
            .get(self.gateway.url(&format!("/v1/jobs?{query}")))
            .bearer_auth(token(owner))
            .send()
            .await
            .expect("list");
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.expect("JSON");
        if status == 200 {
            self.schemas.assert_valid("job_list", &body);
        }
        (status, body)
    }

    /// One page that must be a 200: its job ids and its `next_cursor`.
    async fn page(&self, owner: &str, query: &str) -> (Vec<String>, Option<String>) {
        let (status, body) = self.list(owner, query).await;
        assert_eq!(status, 200, "{query}: {body}");
        (ids(&body), body["next_cursor"].as_str().map(str::to_owned))
    }

    /// Every page of `query` with `limit`, following `next_cursor`.
    async fn all_pages(&self, owner: &str, query: &str, limit: usize) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut page_query = format!("{query}&limit={limit}");
            if let Some(cursor) = &cursor {
                page_query.push_str(&format!("&cursor={cursor}"));
            }
            let (jobs, next) = self.page(owner, &page_query).await;
            assert!(jobs.len() <= limit, "{jobs:?}");
            pages.push(jobs);
            match next {
                Some(next) => cursor = Some(next),
                None => return pages,
            }
            assert!(pages.len() < 100, "the listing does not end");
        }
    }

    async fn redis(&self) -> MultiplexedConnection {
        self.redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("redis")
    }

    /// Every key with its type and, for the owner indexes, their members.
    async fn contents(&self) -> Vec<(String, String)> {
        let mut conn = self.redis().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("keys");
        keys.sort();
        let mut contents = Vec::new();
        for key in keys {
            let members: Vec<String> = if key.starts_with("jobgate:owner:") {
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .expect("zrange")
            } else {
                Vec::new()
            };
            contents.push((key, members.join(",")));
        }
        contents
    }

    async fn indexed(&self, owner: &str) -> Vec<String> {
        redis::cmd("ZRANGE")
            .arg(format!("jobgate:owner:{{{owner}}}:jobs"))
            .arg(0)
            .arg(-1)
            .arg("REV")
            .query_async(&mut self.redis().await)
            .await
            .expect("zrange")
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["job_id"].as_str().expect("job_id").to_owned())
        .collect()
}

fn newest_first(mut submitted: Vec<String>) -> Vec<String> {
    submitted.reverse();
    submitted
}

#[tokio::test]
async fn jobs_come_newest_first_filtered_by_status_and_kind() {
    let mut t = Listing::start().await;
    let mut submitted = Vec::new();
    for kind in ["echo", "other", "echo", "echo", "other", "echo"] {
        submitted.push(t.submit("alice", kind).await);
    }
    let completed = &submitted[2];
    assert_eq!(t.driver.start(completed).await.expect("start"), "ok");
    let done = t.driver.complete(completed, 1, r#"{"x":1}"#).await;
    assert_eq!(done.expect("complete"), "ok");
    let cancelled = &submitted[4];
    let answer = t
        .http
        .post(t.gateway.url(&format!("/v1/jobs/{cancelled}/cancel")))
        .bearer_auth(token("alice"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(answer.status(), 202);

    let (status, page) = t.list("alice", "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), newest_first(submitted.clone()));
    assert_eq!(page["next_cursor"], Value::Null);
    // Each item is the job's snapshot, as `GET /v1/jobs/{id}` serves it.
    for item in page["jobs"].as_array().expect("jobs") {
        let id = item["job_id"].as_str().expect("id");
        let snapshot: Value = t
            .http
            .get(t.gateway.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(token("alice"))
            .send()
            .await
            .expect("snapshot")
            .json()
            .await
            .expect("JSON");
        assert_eq!(*item, snapshot);
    }

    let only = |query: &'static str| t.page("alice", query);
    assert_eq!(only("status=completed").await.0, [completed.as_str()]);
    assert_eq!(
        only("status=completed,cancelled").await.0,
        [cancelled.clone(), completed.clone()]
    );
    assert_eq!(
        only("kind=other").await.0,
        [submitted[4].clone(), submitted[1].clone()]
    );
    assert_eq!(
        only("kind=echo&status=queued").await.0,
        [
            submitted[5].clone(),
            submitted[3].clone(),
            submitted[0].clone()
        ]
    );
    assert_eq!(only("kind=never_registered").await, (vec![], None));
}

#[tokio::test]
async fn pages_hold_every_job_exactly_once_while_new_jobs_arrive() {
    let t = Listing::start().await;
    let mut submitted = Vec::new();
    for _ in 0..8 {
        submitted.push(t.submit("alice", "echo").await);
    }
    let pages = t.all_pages("alice", "", 3).await;
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert_eq!(pages.concat(), newest_first(submitted.clone()));

    // Jobs submitted between pages come before the first page: they shift
    // nothing.
    let (first, cursor) = t.page("alice", "limit=3").await;
    let mut newer = vec![t.submit("alice", "echo").await];
    let cursor = cursor.expect("a second page");
    let (second, cursor) = t.page("alice", &format!("limit=3&cursor={cursor}")).await;
    newer.push(t.submit("alice", "other").await);
    newer.push(t.submit("alice", "echo").await);
    let cursor = cursor.expect("a third page");
    let (third, cursor) = t.page("alice", &format!("limit=3&cursor={cursor}")).await;
    assert_eq!(cursor, None);
    assert_eq!(
        [first, second, third].concat(),
        newest_first(submitted.clone())
    );
    // A listing from the start now has the newer jobs first.
    assert_eq!(t.page("alice", "limit=3").await.0, newest_first(newer));
}

#[tokio::test]
async fn jobs_indexed_in_the_same_millisecond_are_each_listed_once() {
    let t = Listing::start().await;
    let mut submitted = Vec::new();
    for _ in 0..8 {
        submitted.push(t.submit("alice", "echo").await);
    }
    // As when several gateways index jobs in one millisecond: one score.
    let mut conn = t.redis().await;
    for id in &submitted {
        let _: i64 = redis::cmd("ZADD")
            .arg("jobgate:owner:{alice}:jobs")
            .arg("XX")
            .arg(1_796_000_000_000_u64)
            .arg(id)
            .query_async(&mut conn)
            .await
            .expect("zadd");
    }
    // Ties are ordered by id, and the gateway's ids are time-ordered.
    for limit in [1, 3, 8] {
        let pages = t.all_pages("alice", "", limit).await;
        assert_eq!(pages.concat(), newest_first(submitted.clone()), "{limit}");
    }
}

#[tokio::test]
async fn a_filtered_page_stops_after_a_bounded_scan_and_says_where_to_go_on() {
    let t = Listing::start().await;
    let wanted = t.submit("alice", "other").await;
    for _ in 0..25 {
        t.submit("alice", "echo").await;
    }
    // limit 2 reads at most 20 jobs: the first page finds no `other` job
    // but a cursor; the listing goes on and finds it.
    let (jobs, cursor) = t.page("alice", "kind=other&limit=2").await;
    assert!(jobs.is_empty(), "{jobs:?}");
    let cursor = cursor.expect("more to read");
    let (jobs, cursor) = t
        .page("alice", &format!("kind=other&limit=2&cursor={cursor}"))
        .await;
    assert_eq!((jobs, cursor), (vec![wanted], None));
}

#[tokio::test]
async fn expired_jobs_leave_the_listing_and_the_index() {
    let mut t = Listing::start().await;
    let mut submitted = Vec::new();
    for _ in 0..4 {
        submitted.push(t.submit("alice", "echo").await);
    }
    let (gone, kept) = (&submitted[1], &submitted[2]);
    t.driver.start(gone).await.expect("start");
    t.driver.complete(gone, 1, "{}").await.expect("complete");
    // As if its retention ran out: the record and history expire.
    let mut conn = t.redis().await;
    for key in [
        format!("jobgate:job:{{{gone}}}"),
        format!("jobgate:events:{{{gone}}}"),
    ] {
        let set: i64 = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("pexpire");
        assert_eq!(set, 1, "{key}");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(t.indexed("alice").await.contains(gone));

    let mut expected = newest_first(submitted.clone());
    expected.retain(|id| id != gone);
    let pages = t.all_pages("alice", "", 2).await;
    assert_eq!(pages.concat(), expected);
    assert_eq!(t.indexed("alice").await, expected);
    assert!(t.indexed("alice").await.contains(kept));
}

#[tokio::test]
async fn the_owner_index_is_bounded_and_expires() {
    let t = Listing::start_with(|config| {
        config.owner_index_max = 5;
        config.retention_s = 3600;
    })
    .await;
    let mut submitted = Vec::new();
    for _ in 0..7 {
        submitted.push(t.submit("alice", "echo").await);
    }
    let newest_five = newest_first(submitted[2..].to_vec());
    assert_eq!(t.indexed("alice").await, newest_five);
    assert_eq!(t.page("alice", "").await, (newest_five, None));
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg("jobgate:owner:{alice}:jobs")
        .query_async(&mut t.redis().await)
        .await
        .expect("pttl");
    assert!((1..=3_600_000).contains(&ttl_ms), "{ttl_ms}");
}

#[tokio::test]
async fn bad_queries_get_422_naming_the_parameter_and_change_nothing() {
    let t = Listing::start().await;
    let job = t.submit("alice", "echo").await;
    // An expired job in the index: a listing would remove it, a refused
    // request must not.
    let _: i64 = redis::cmd("DEL")
        .arg(format!("jobgate:job:{{{job}}}"))
        .query_async(&mut t.redis().await)
        .await
        .expect("del");
    t.submit("alice", "echo").await;
    t.submit("alice", "echo").await;
    let (_, valid_cursor) = t.page("alice", "limit=1").await;
    let valid_cursor = valid_cursor.expect("a cursor");
    let before = t.contents().await;
    for (query, parameter) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=-3", "limit"),
        ("limit=many", "limit"),
        ("limit=", "limit"),
        ("status=done", "status"),
        ("status=queued,,failed", "status"),
        ("status=", "status"),
        ("kind=", "kind"),
        ("kind=no%20spaces", "kind"),
        ("cursor=", "cursor"),
        ("cursor=%21%21", "cursor"),
        ("cursor=MTI6bm90LWEtam9i", "cursor"),
        ("cursor=bm90LWEtY3Vyc29y", "cursor"),
    ] {
        let (status, body) = t.list("alice", query).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["code"], "invalid_request", "{query}");
        let message = body["message"].as_str().expect("message");
        assert!(message.starts_with(parameter), "{query}: {message}");
        // A bad parameter beside a good cursor is refused just as well.
        let (status, _) = t
            .list("alice", &format!("{query}&cursor={valid_cursor}"))
            .await;
        assert_eq!(status, 422, "{query} with a cursor");
    }
    assert_eq!(t.contents().await, before);
    assert!(t.indexed("alice").await.contains(&job));
}

#[tokio::test]
async fn another_owners_jobs_never_appear() {
    let t = Listing::start().await;
    let mut alice = Vec::new();
    let mut bob = Vec::new();
    for _ in 0..3 {
        alice.push(t.submit("alice", "echo").await);
        bob.push(t.submit("bob", "echo").await);
    }
    assert_eq!(
        t.all_pages("alice", "", 2).await.concat(),
        newest_first(alice.clone())
    );
    assert_eq!(
        t.all_pages("bob", "status=queued", 2).await.concat(),
        newest_first(bob.clone())
    );
    // Bob's cursor, in Alice's hands, reads only Alice's index.
    let (_, bob_cursor) = t.page("bob", "limit=1").await;
    let bob_cursor = bob_cursor.expect("a cursor");
    let (jobs, _) = t
        .page("alice", &format!("limit=200&cursor={bob_cursor}"))
        .await;
    assert!(jobs.iter().all(|id| alice.contains(id)), "{jobs:?}");
    assert!(!jobs.is_empty());
    // Without a token, nothing.
    let answer = t
        .http
        .get(t.gateway.url("/v1/jobs"))
        .send()
        .await
        .expect("list");
    assert_eq!(answer.status(), 401);
}
