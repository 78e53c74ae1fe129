//! The HTTP side of the Registry API v2: endpoints (HTTPS, or plain HTTP for
//! loopback and `--insecure-registry` hosts), credentials from
//! `X-Registry-Auth`, and a session per repository that answers `401`
//! challenges (Bearer token or Basic) and retries once.

use std::net::IpAddr;

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::RegistryError;

/// The host Docker Hub's API lives on.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Credentials sent by the client in `X-Registry-Auth`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// `base64(user:password)`, used when username/password are empty.
    #[serde(default)]
    pub auth: String,
    /// A bearer token to send as is.
    #[serde(default, rename = "registrytoken")]
    pub registry_token: String,
}

impl Credentials {
    /// Decodes the `X-Registry-Auth` header (base64url JSON, padded or not).
    /// An empty header or `{}` means anonymous.
    pub fn from_header(value: Option<&str>) -> Result<Credentials, RegistryError> {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Credentials::default());
        };
        let raw = base64_decode(v).ok_or_else(|| RegistryError::BadAuth("X-Registry-Auth is not base64".into()))?;
        let mut c: Credentials =
            serde_json::from_slice(&raw).map_err(|e| RegistryError::BadAuth(format!("X-Registry-Auth is not JSON: {e}")))?;
        if c.username.is_empty() && !c.auth.is_empty() {
            let pair = base64_decode(&c.auth).ok_or_else(|| RegistryError::BadAuth("auth is not base64".into()))?;
            let pair = String::from_utf8(pair).map_err(|_| RegistryError::BadAuth("auth is not UTF-8".into()))?;
            let (u, p) = pair.split_once(':').ok_or_else(|| RegistryError::BadAuth("auth is not user:password".into()))?;
            c.username = u.to_string();
            c.password = p.to_string();
        }
        Ok(c)
    }

    fn has_password(&self) -> bool {
        !self.username.is_empty()
    }
}

/// Decodes standard or URL-safe base64, with or without padding.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Where a registry is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The registry as references name it (`127.0.0.1:5000`, `docker.io`).
    pub domain: String,
    /// `http://127.0.0.1:5000` or `https://registry-1.docker.io`.
    pub base: String,
}

impl Endpoint {
    /// The endpoint of `domain`: plain HTTP for loopback hosts and hosts
    /// listed in `insecure` (as `host`, `host:port` or an IPv4/IPv6 CIDR),
    /// HTTPS for everything else.
    pub fn new(domain: &str, insecure: &[String]) -> Endpoint {
        let host = if domain == super::DEFAULT_DOMAIN { DOCKER_HUB_API } else { domain };
        let scheme = if is_plain_http(host, insecure) { "http" } else { "https" };
        Endpoint { domain: domain.to_string(), base: format!("{scheme}://{host}") }
    }
}

fn host_part(hostport: &str) -> &str {
    if let Some(rest) = hostport.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => hostport,
    }
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else { return false };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else { return false };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            (u32::from(a) & mask) == (u32::from(b) & mask)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if len <= 128 => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            (u128::from(a) & mask) == (u128::from(b) & mask)
        }
        _ => false,
    }
}

/// Whether the registry at `hostport` is spoken to in plain HTTP.
pub fn is_plain_http(hostport: &str, insecure: &[String]) -> bool {
    let host = host_part(hostport);
    let ip = host.parse::<IpAddr>().ok();
    if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
        return true;
    }
    insecure.iter().any(|entry| {
        let entry = entry.trim();
        let entry = entry.strip_prefix("http://").or_else(|| entry.strip_prefix("https://")).unwrap_or(entry);
        entry == hostport || entry == host || ip.is_some_and(|ip| in_cidr(ip, entry))
    })
}

/// The authorization a session has earned.
#[derive(Debug, Clone)]
enum Authorization {
    Bearer(String),
    Basic,
}

/// A conversation with one repository of one registry.
pub struct Session {
    http: reqwest::Client,
    pub endpoint: Endpoint,
    /// The repository path in the registry (`library/busybox`).
    pub repo: String,
    creds: Credentials,
    /// The scopes asked for when a token is needed.
    scopes: Vec<String>,
    auth: tokio::sync::Mutex<Option<Authorization>>,
}

#[derive(Deserialize)]
struct TokenReply {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

/// The parameters of a `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="https://auth",service="registry",scope="a,b"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_string();
        let after = after.trim_start();
        let (value, remainder) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key, value));
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
}

impl Session {
    pub fn new(http: reqwest::Client, endpoint: Endpoint, repo: &str, creds: Credentials, actions: &str) -> Session {
        Session {
            http,
            endpoint,
            repo: repo.to_string(),
            creds,
            scopes: vec![format!("repository:{repo}:{actions}")],
            auth: tokio::sync::Mutex::new(None),
        }
    }

    /// Asks for pull access to another repository too (the source of a
    /// cross-repository mount) when the next token is fetched.
    pub async fn add_scope(&mut self, scope: String) {
        if !self.scopes.contains(&scope) {
            self.scopes.push(scope);
            *self.auth.lock().await = None;
        }
    }

    /// `<base>/v2/<repo>/<suffix>`.
    pub fn url(&self, suffix: &str) -> String {
        format!("{}/v2/{}/{}", self.endpoint.base, self.repo, suffix)
    }

    /// Resolves a `Location` header against the registry's base URL.
    pub fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("{}{location}", self.endpoint.base)
        } else {
            format!("{}/{location}", self.endpoint.base)
        }
    }

    /// A request builder with the session's current authorization.
    pub async fn builder(&self, method: Method, url: &str) -> RequestBuilder {
        let b = self.http.request(method, url);
        match self.auth.lock().await.clone() {
            Some(Authorization::Bearer(t)) => b.bearer_auth(t),
            Some(Authorization::Basic) => b.basic_auth(&self.creds.username, Some(&self.creds.password)),
            None => b,
        }
    }

    /// Sends a request built by `build` (called again for the retry); a
    /// `401` with a challenge is answered once.
    pub async fn send(&self, method: Method, url: &str, extra: &(dyn Fn(RequestBuilder) -> RequestBuilder + Sync)) -> Result<Response, RegistryError> {
        let resp = extra(self.builder(method.clone(), url).await).send().await.map_err(|e| RegistryError::http(url, e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        self.authorize(resp.headers()).await?;
        let resp = extra(self.builder(method, url).await).send().await.map_err(|e| RegistryError::http(url, e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Denied { repo: self.repo.clone(), detail: error_text(resp).await });
        }
        Ok(resp)
    }

    /// Makes sure the session is authorized before a request whose body
    /// cannot be sent twice (a blob upload): probes `/v2/` and answers its
    /// challenge.
    pub async fn ensure_authorized(&self) -> Result<(), RegistryError> {
        if self.auth.lock().await.is_some() {
            return Ok(());
        }
        let url = format!("{}/v2/", self.endpoint.base);
        let resp = self.http.get(&url).send().await.map_err(|e| RegistryError::http(&url, e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.authorize(resp.headers()).await?;
        }
        Ok(())
    }

    async fn authorize(&self, headers: &HeaderMap) -> Result<(), RegistryError> {
        let challenge = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .min_by_key(|c| if c.scheme == "bearer" { 0 } else { 1 })
            .ok_or_else(|| RegistryError::Denied { repo: self.repo.clone(), detail: "no usable authentication challenge".into() })?;
        let auth = match challenge.scheme.as_str() {
            "basic" => {
                if !self.creds.has_password() {
                    return Err(RegistryError::Denied { repo: self.repo.clone(), detail: "authentication required".into() });
                }
                Authorization::Basic
            }
            "bearer" if !self.creds.registry_token.is_empty() => Authorization::Bearer(self.creds.registry_token.clone()),
            "bearer" => Authorization::Bearer(self.fetch_token(&challenge).await?),
            other => {
                return Err(RegistryError::Denied { repo: self.repo.clone(), detail: format!("unsupported authentication scheme {other:?}") })
            }
        };
        *self.auth.lock().await = Some(auth);
        Ok(())
    }

    async fn fetch_token(&self, challenge: &Challenge) -> Result<String, RegistryError> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| RegistryError::Denied { repo: self.repo.clone(), detail: "bearer challenge without realm".into() })?;
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = challenge.param("service") {
            query.push(("service", service));
        }
        for s in &self.scopes {
            query.push(("scope", s));
        }
        let mut req = self.http.get(realm).query(&query);
        if self.creds.has_password() {
            req = req.basic_auth(&self.creds.username, Some(&self.creds.password));
        }
        let resp = req.send().await.map_err(|e| RegistryError::http(realm, e))?;
        if !resp.status().is_success() {
            return Err(RegistryError::Denied { repo: self.repo.clone(), detail: error_text(resp).await });
        }
        let body = resp.bytes().await.map_err(|e| RegistryError::http(realm, e))?;
        let reply: TokenReply =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol(format!("token reply from {realm}: {e}")))?;
        let token = if reply.token.is_empty() { reply.access_token } else { reply.token };
        if token.is_empty() {
            return Err(RegistryError::Protocol(format!("token reply from {realm} holds no token")));
        }
        Ok(token)
    }
}

/// The registry's error text: the `errors[].message` list of its JSON
/// reply, or the status.
pub async fn error_text(resp: Response) -> String {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|i| if i.code.is_empty() { i.message.clone() } else { format!("{}: {}", i.code.to_lowercase(), i.message) })
            .collect::<Vec<_>>()
            .join(", "),
        _ => format!("{status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_quoted_and_bare_values() {
        let c = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#)
            .expect("parse");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("scope"), Some("repository:library/busybox:pull,push"));
        let c = parse_challenge("Basic realm=Registry").expect("parse");
        assert_eq!((c.scheme.as_str(), c.param("realm")), ("basic", Some("Registry")));
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let insecure = vec!["myreg.local:5000".to_string(), "10.1.0.0/16".to_string()];
        assert!(is_plain_http("127.0.0.1:5000", &[]));
        assert!(is_plain_http("127.9.9.9", &[]));
        assert!(is_plain_http("localhost:5000", &[]));
        assert!(is_plain_http("[::1]:5000", &[]));
        assert!(is_plain_http("myreg.local:5000", &insecure));
        assert!(!is_plain_http("myreg.local:5001", &insecure));
        assert!(is_plain_http("10.1.2.3:5000", &insecure));
        assert!(!is_plain_http("10.2.0.1:5000", &insecure));
        assert!(!is_plain_http("registry.example.com", &insecure));
        assert_eq!(Endpoint::new("docker.io", &[]).base, "https://registry-1.docker.io");
        assert_eq!(Endpoint::new("localhost:5000", &[]).base, "http://localhost:5000");
    }

    #[test]
    fn registry_auth_header_decodes_all_shapes() {
        assert_eq!(Credentials::from_header(Some("e30=")).expect("empty"), Credentials::default());
        assert_eq!(Credentials::from_header(None).expect("none"), Credentials::default());
        // {"username":"u","password":"p?>"} in URL-safe base64 without padding.
        let c = Credentials::from_header(Some("eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InA_PiJ9")).expect("decode");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p?>"));
        // {"auth":"dTpwdw=="} carries base64("u:pw").
        let c = Credentials::from_header(Some("eyJhdXRoIjoiZFRwd2R3PT0ifQ==")).expect("decode");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "pw"));
        assert!(Credentials::from_header(Some("!!!")).is_err());
        assert!(Credentials::from_header(Some("bm90IGpzb24")).is_err());
    }

    /// A registry endpoint that wants a Bearer token from its token
    /// service, which wants Basic credentials: the session follows the
    /// challenge, asks for the right service and scope, and retries.
    #[tokio::test]
    async fn bearer_challenge_is_answered_with_a_token() {
        use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
        use axum::response::IntoResponse;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let realm = format!("http://127.0.0.1:{port}/token");
        let challenge = format!(r#"Bearer realm="{realm}",service="test-registry",scope="repository:r/x:pull""#);
        let protected = move |headers: AxHeaders| {
            let challenge = challenge.clone();
            async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer tok-123") {
                    (AxStatus::OK, "manifest").into_response()
                } else {
                    (AxStatus::UNAUTHORIZED, [("www-authenticate", challenge)], "").into_response()
                }
            }
        };
        let token = |headers: AxHeaders, axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
            // base64("u:pw")
            let basic_ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic dTpwdw==");
            let q = q.unwrap_or_default();
            if basic_ok && q.contains("service=test-registry") && q.contains("scope=repository%3Ar%2Fx%3Apull") {
                (AxStatus::OK, r#"{"token":"tok-123"}"#).into_response()
            } else {
                (AxStatus::UNAUTHORIZED, r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#).into_response()
            }
        };
        let app = axum::Router::new()
            .route("/v2/r/x/manifests/t", axum::routing::get(protected))
            .route("/token", axum::routing::get(token));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let endpoint = Endpoint::new(&format!("127.0.0.1:{port}"), &[]);
        let creds = Credentials { username: "u".into(), password: "pw".into(), ..Default::default() };
        let session = Session::new(reqwest::Client::new(), endpoint.clone(), "r/x", creds, "pull");
        let url = session.url("manifests/t");
        let resp = session.send(Method::GET, &url, &|b| b).await.expect("authorized request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.text().await.expect("body"), "manifest");

        let wrong = Credentials { username: "u".into(), password: "nope".into(), ..Default::default() };
        let session = Session::new(reqwest::Client::new(), endpoint.clone(), "r/x", wrong, "pull");
        let err = session.send(Method::GET, &url, &|b| b).await.expect_err("wrong password");
        assert!(matches!(err, RegistryError::Denied { .. }), "{err:?}");
        assert!(err.to_string().contains("bad credentials"), "{err}");

        let anonymous = Session::new(reqwest::Client::new(), endpoint, "r/x", Credentials::default(), "pull");
        assert!(matches!(anonymous.send(Method::GET, &url, &|b| b).await, Err(RegistryError::Denied { .. })));
        server.abort();
    }
}
