//! AWS Signature Version 4 verification (and, for clients that bypass the SDK, signing) of incoming requests (header-signed, `AWS4-HMAC-SHA256`).
//! Owns parsing the Authorization header and recomputing the signature; does not know which
//! secret belongs to which key (the caller looks that up) nor how errors look on the wire.

use hmac::{Hmac, KeyInit, Mac};
use hyper::HeaderMap;
use sha2::{Digest, Sha256};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The parts of an `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Authorization {
    pub access_key_id: String,
    /// `YYYYMMDD` from the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Why a request's signature cannot be accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SigError {
    #[error("request is missing an Authorization header")]
    Missing,
    #[error("authorization header is malformed: {0}")]
    Malformed(String),
    #[error(
        "the request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."
    )]
    Mismatch,
}

impl Authorization {
    /// Parse the header value.
    pub(crate) fn parse(value: &str) -> Result<Authorization, SigError> {
        let malformed = |what: &str| SigError::Malformed(what.to_owned());
        let rest = value
            .strip_prefix(ALGORITHM)
            .ok_or_else(|| malformed("only AWS4-HMAC-SHA256 is supported"))?;
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                signed_headers = Some(v);
            } else if let Some(v) = part.strip_prefix("Signature=") {
                signature = Some(v);
            }
        }
        let credential = credential.ok_or_else(|| malformed("Credential is missing"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = scope[..] else {
            return Err(malformed(
                "Credential is not KEY/DATE/REGION/SERVICE/aws4_request",
            ));
        };
        if terminator != "aws4_request" || date.len() != 8 || access_key_id.is_empty() {
            return Err(malformed("Credential scope is malformed"));
        }
        let signed_headers = signed_headers
            .ok_or_else(|| malformed("SignedHeaders is missing"))?
            .split(';')
            .map(str::to_owned)
            .collect();
        let signature = signature.ok_or_else(|| malformed("Signature is missing"))?;
        Ok(Authorization {
            access_key_id: access_key_id.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signed_headers,
            signature: signature.to_owned(),
        })
    }

    /// Recompute the signature with `secret` and compare it with the one sent.
    pub(crate) fn verify(
        &self,
        secret: &str,
        method: &str,
        raw_path: &str,
        raw_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), SigError> {
        let amz_date = header(headers, "x-amz-date")
            .ok_or_else(|| SigError::Malformed("X-Amz-Date header is missing".to_owned()))?;
        if !amz_date.starts_with(&self.date) {
            return Err(SigError::Malformed(
                "credential scope date does not match X-Amz-Date".to_owned(),
            ));
        }
        if !self.signed_headers.iter().any(|h| h == "host") {
            return Err(SigError::Malformed(
                "the host header must be signed".to_owned(),
            ));
        }
        let body_hash = hex::encode(Sha256::digest(body));
        let payload_hash = match header(headers, "x-amz-content-sha256") {
            Some(UNSIGNED_PAYLOAD) => UNSIGNED_PAYLOAD.to_owned(),
            Some(claimed) if claimed != body_hash => return Err(SigError::Mismatch),
            _ => body_hash,
        };
        let expected = self.signature_for(
            secret,
            method,
            raw_path,
            raw_query,
            headers,
            amz_date,
            &payload_hash,
        );
        if constant_time_eq(expected.as_bytes(), self.signature.as_bytes()) {
            Ok(())
        } else {
            Err(SigError::Mismatch)
        }
    }
}

impl Authorization {
    /// The signature this request should carry when signed with `secret`.
    #[allow(clippy::too_many_arguments)]
    fn signature_for(
        &self,
        secret: &str,
        method: &str,
        raw_path: &str,
        raw_query: &str,
        headers: &HeaderMap,
        amz_date: &str,
        payload_hash: &str,
    ) -> String {
        let mut canonical_headers = String::new();
        for name in &self.signed_headers {
            let values: Vec<String> = headers
                .get_all(name.as_str())
                .iter()
                .map(|v| trim_all(&String::from_utf8_lossy(v.as_bytes())))
                .collect();
            canonical_headers.push_str(name);
            canonical_headers.push(':');
            canonical_headers.push_str(&values.join(","));
            canonical_headers.push('\n');
        }
        let canonical_request = format!(
            "{method}\n{}\n{}\n{canonical_headers}\n{}\n{payload_hash}",
            canonical_uri(raw_path),
            canonical_query(raw_query),
            self.signed_headers.join(";"),
        );
        let scope = format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        );
        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let key = signing_key(secret, &self.date, &self.region, &self.service);
        hex::encode(hmac(&key, string_to_sign.as_bytes()))
    }
}

/// Sign a request the way the AWS SDKs do and return its `Authorization` header value.
/// `headers` must contain `host` and `x-amz-date` (`YYYYMMDDTHHMMSSZ`); every header given is
/// signed. For clients that bypass the SDK (the benchmark, shell demos); the server verifies
/// with the same canonicalisation.
#[allow(clippy::too_many_arguments)]
pub fn sign_request(
    access_key_id: &str,
    secret_access_key: &str,
    region: &str,
    service: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<String, SigError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = hyper::header::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| SigError::Malformed(format!("bad header name {name}")))?;
        let value = hyper::header::HeaderValue::from_str(value)
            .map_err(|_| SigError::Malformed(format!("bad header value for {name}")))?;
        map.append(name, value);
    }
    let amz_date = header(&map, "x-amz-date")
        .ok_or_else(|| SigError::Malformed("X-Amz-Date header is missing".to_owned()))?
        .to_owned();
    if amz_date.len() < 8 || !map.contains_key("host") {
        return Err(SigError::Malformed(
            "host and a valid x-amz-date are required".to_owned(),
        ));
    }
    let mut signed_headers: Vec<String> = map.keys().map(|k| k.as_str().to_owned()).collect();
    signed_headers.sort();
    signed_headers.dedup();
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let auth = Authorization {
        access_key_id: access_key_id.to_owned(),
        date: amz_date[..8].to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature: String::new(),
    };
    let payload_hash = hex::encode(Sha256::digest(body));
    let signature = auth.signature_for(
        secret_access_key,
        method,
        path,
        query,
        &map,
        &amz_date,
        &payload_hash,
    );
    Ok(format!(
        "{ALGORITHM} Credential={access_key_id}/{}/{region}/{service}/aws4_request, SignedHeaders={}, Signature={signature}",
        auth.date,
        auth.signed_headers.join(";")
    ))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The SigV4 signing key: HMAC chain over date, region, service and `aws4_request`.
pub(crate) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC is defined for keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("hmac takes any key");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Header values are trimmed and inner runs of spaces collapsed to one (SigV4 step 4).
fn trim_all(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut last_space = false;
    for c in value.trim_matches(' ').chars() {
        if c == ' ' {
            if !last_space {
                out.push(c);
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn percent_encode(text: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Non-S3 services sign the path as sent on the wire, percent-encoded once more (the SDK's
/// double-encoding mode): `%` becomes `%25`, `/` stays.
fn canonical_uri(raw_path: &str) -> String {
    if raw_path.is_empty() {
        "/".to_owned()
    } else {
        percent_encode(raw_path.as_bytes(), true)
    }
}

fn percent_decode(text: &str) -> Vec<u8> {
    fn hex_digit(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2]))
        {
            out.push(high << 4 | low);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Query parameters decoded, re-encoded strictly and sorted by name then value.
fn canonical_query(raw_query: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_encode(&percent_decode(name), false),
                percent_encode(&percent_decode(value), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The "get-vanilla" case of the AWS SigV4 test suite (as used by aws-sigv4's own tests).
    #[test]
    fn verifies_the_aws_test_suite_vanilla_request() {
        let auth = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        assert_eq!(auth.verify(secret, "GET", "/", "", &headers, b""), Ok(()));
        assert_eq!(
            auth.verify("wrong", "GET", "/", "", &headers, b""),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn sign_request_is_verified_by_the_server_side() {
        let headers = [
            ("host", "127.0.0.1:4599"),
            ("x-amz-date", "20261129T120000Z"),
            ("x-amz-target", "TrentService.DescribeCustomKeyStores"),
        ];
        let value = sign_request(
            "AK",
            "secret",
            "eu-west-1",
            "kms",
            "POST",
            "/",
            &headers,
            b"{}",
        )
        .unwrap();
        let auth = Authorization::parse(&value).unwrap();
        let mut map = HeaderMap::new();
        for (name, v) in headers {
            map.insert(name, v.parse().unwrap());
        }
        assert_eq!(auth.verify("secret", "POST", "/", "", &map, b"{}"), Ok(()));
        assert_eq!(
            auth.verify("secret", "POST", "/", "", &map, b"{ }"),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn rejects_other_algorithms_and_short_scopes() {
        assert!(Authorization::parse("AWS4-HMAC-SHA512 Credential=a/b/c/d/e").is_err());
        assert!(
            Authorization::parse(
                "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/aws4_request, SignedHeaders=host, Signature=00"
            )
            .is_err()
        );
    }

    #[test]
    fn query_is_sorted_and_reencoded() {
        assert_eq!(canonical_query("b=2&a=%7e&a=1"), "a=1&a=~&b=2");
        assert_eq!(canonical_uri("/a b/%2F"), "/a%20b/%252F");
    }
}
