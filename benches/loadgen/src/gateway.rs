//! The gateway under test: its address (loopback only) and its process.

use anyhow::Context;
use std::net::IpAddr;

use reqwest::Url;

/// Where the gateway listens. Only loopback addresses are accepted: the
/// load generator never sends traffic off this machine.
#[derive(Debug, Clone)]
pub(crate) struct Gateway {
    base: Url,
    token: Option<String>,
}

impl Gateway {
    pub(crate) fn parse(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let base = Url::parse(url).with_context(|| format!("--url {url:?} is not a URL"))?;
        anyhow::ensure!(
            base.scheme() == "http",
            "--url must be http:// (the gateway under test serves plain HTTP)"
        );
        let host = base.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        anyhow::ensure!(
            loopback,
            "--url must name a loopback address (127.0.0.0/8, ::1 or localhost)"
        );
        Ok(Self { base, token })
    }

    /// `http://host:port<path>`.
    pub(crate) fn http(&self, path: &str) -> String {
        let mut url = self.base.clone();
        url.set_path(path);
        url.set_query(None);
        url.to_string()
    }

    /// `ws://host:port<path>`.
    pub(crate) fn ws(&self, path: &str) -> String {
        let http = self.http(path);
        format!("ws{}", http.trim_start_matches("http"))
    }

    /// `Authorization: Bearer <token>`, when a token was given.
    pub(crate) fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|token| format!("Bearer {token}"))
    }

    /// An HTTP client that talks only to this gateway (no proxies).
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = self.authorization() {
            headers.insert(reqwest::header::AUTHORIZATION, value.parse()?);
        }
        Ok(reqwest::Client::builder()
            .default_headers(headers)
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(5))
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_loopback() {
        assert!(Gateway::parse("http://127.0.0.1:8080", None).is_ok());
        assert!(Gateway::parse("http://localhost:1", None).is_ok());
        assert!(Gateway::parse("http://[::1]:80", None).is_ok());
        assert!(Gateway::parse("http://10.0.0.1:8080", None).is_err());
        assert!(Gateway::parse("http://example.com", None).is_err());
        assert!(Gateway::parse("https://127.0.0.1", None).is_err());
    }

    #[test]
    fn builds_urls() {
        let gateway = Gateway::parse("http://127.0.0.1:8080", None).expect("valid");
        assert_eq!(gateway.http("/v1/jobs"), "http://127.0.0.1:8080/v1/jobs");
        assert_eq!(gateway.ws("/v1/ws"), "ws://127.0.0.1:8080/v1/ws");
    }
}
