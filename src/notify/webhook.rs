//! The webhook sink: `POST` of the notification body with `Content-Type: application/json`,
//! signed as GitHub signs its webhooks (`X-Kms-Killswitch-Signature: sha256=<hex HMAC>`) when a
//! secret is set. Uses the hyper + rustls stack the AWS SDK already brings (no second TLS
//! stack). Owns the secret's bytes and never logs them; one attempt per call (the caller
//! retries and audits).

use std::path::Path;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::NotifyError;

/// The signature header (DESIGN.md §9).
pub const SIGNATURE_HEADER: &str = "X-Kms-Killswitch-Signature";
/// Largest secret read: a webhook secret is a few dozen bytes; the cap keeps a wrong path (a
/// log, a device) from being read into memory.
const MAX_SECRET_BYTES: u64 = 4096;

/// The webhook's signing key. `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    /// Read the secret at `path` the way the policy is read: a regular file opened without
    /// following symlinks, in directories only root or the daemon's user can change, readable
    /// by its owner only. Trailing newlines are not part of it.
    pub fn read(path: &Path) -> Result<Secret, NotifyError> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let unreadable = |reason: String| NotifyError::Secret {
            path: path.to_owned(),
            reason,
        };
        if let Some(dir) = path.parent() {
            crate::fs_trust::check_dir(dir, crate::fs_trust::Leaf::StickyOk).map_err(
                |untrusted| unreadable(format!("in a directory others can change: {untrusted}")),
            )?;
        }
        let file =
            crate::fs_trust::open_regular(path).map_err(|err| unreadable(err.to_string()))?;
        let metadata = file.metadata().map_err(|err| unreadable(err.to_string()))?;
        let uid = metadata.uid();
        if uid != 0 && uid != crate::fs_trust::running_uid() {
            return Err(unreadable(format!(
                "owned by uid {uid}, neither root nor the daemon's user"
            )));
        }
        if metadata.mode() & 0o077 != 0 {
            return Err(unreadable(format!(
                "mode {:04o} lets others read it (fix: `chmod 600`)",
                metadata.mode() & 0o7777
            )));
        }
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| unreadable(err.to_string()))?;
        if bytes.len() as u64 > MAX_SECRET_BYTES {
            return Err(unreadable(format!("longer than {MAX_SECRET_BYTES} bytes")));
        }
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(unreadable("empty".into()));
        }
        Ok(Secret(bytes))
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }

    /// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`.
    pub fn sign(&self, body: &[u8]) -> String {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// One webhook: its URL, its secret, and a client (connections pooled).
#[derive(Clone)]
pub struct Webhook {
    url: String,
    secret: Option<Secret>,
    client: Client<HttpsConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("sink", &label(&self.url))
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

/// The sink's name in the audit log and status: `webhook:<scheme>://<host>[:port]`. Never the
/// path or query, which often hold a token (Slack-style URLs).
pub fn label(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => format!("webhook:{}", parsed.origin().ascii_serialization()),
        Err(_) => "webhook:(invalid url)".to_string(),
    }
}

impl Webhook {
    /// A webhook posting to `url` (validated by the policy: https, or http to loopback).
    pub fn new(url: &str, secret: Option<Secret>) -> Result<Webhook, NotifyError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|err| NotifyError::Tls(err.to_string()))?
            // Plain http only ever reaches loopback: the policy refuses anything else.
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Webhook {
            url: url.to_owned(),
            secret,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub fn label(&self) -> String {
        label(&self.url)
    }

    /// POST `body`; the HTTP status on a 2xx answer, else why not.
    pub async fn post(&self, body: &[u8]) -> Result<String, String> {
        let mut request = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "kms-killswitch");
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, secret.sign(body));
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|err| format!("cannot build the request: {err}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| crate::error_chain(&err))?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16().to_string())
        } else {
            Err(format!("http {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_github_and_never_shows_the_secret() {
        // RFC 4231 test case 2.
        let secret = Secret::from_bytes(b"Jefe");
        assert_eq!(
            secret.sign(b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
    }

    #[test]
    fn labels_name_the_origin_only() {
        assert_eq!(
            label("https://hooks.slack.com/services/T0/B0/tokentoken?x=1"),
            "webhook:https://hooks.slack.com"
        );
        assert_eq!(
            label("http://127.0.0.1:8080/hook"),
            "webhook:http://127.0.0.1:8080"
        );
    }

    #[test]
    fn a_secret_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let path = dir.path().join("webhook.secret");
        std::fs::write(&path, "s3cret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Secret::read(&path).expect_err("0644 is refused");
        assert!(err.to_string().contains("lets others read it"), "{err}");
        assert!(!err.to_string().contains("s3cret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        match Secret::read(&path) {
            // The tempdir's parents may be group-writable on some machines: that is refused too.
            Err(NotifyError::Secret { reason, .. }) => {
                assert!(reason.contains("directory"), "{reason}")
            }
            Err(other) => panic!("{other}"),
            Ok(secret) => assert_eq!(secret.sign(b""), Secret::from_bytes(b"s3cret").sign(b"")),
        }
    }
}
