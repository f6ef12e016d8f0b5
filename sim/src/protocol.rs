//! The three AWS wire protocols the simulator speaks (awsJson 1.0/1.1, Smithy RPC v2 CBOR,
//! awsQuery/XML): recognising a request's protocol and operation, and writing successes and
//! errors exactly as the SDKs and the CLI parse them. Knows no operation's meaning.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use crate::value::Value;

/// Smithy RPC v2 CBOR path prefix for CloudWatch (`/service/<Service>/operation/<Op>`).
pub(crate) const CLOUDWATCH_CBOR_PREFIX: &str = "/service/GraniteServiceVersion20100801/operation/";
const CLOUDWATCH_TARGET_PREFIX: &str = "GraniteServiceVersion20100801.";
const KMS_TARGET_PREFIX: &str = "TrentService.";
const SQS_TARGET_PREFIX: &str = "AmazonSQS.";
const STS_XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// How a request is encoded, which fixes how its response must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// KMS, awsJson 1.1.
    KmsJson,
    /// CloudWatch from the Rust SDK, Smithy RPC v2 CBOR.
    CloudWatchCbor,
    /// CloudWatch from the AWS CLI, awsJson 1.0.
    CloudWatchJson,
    /// STS, awsQuery (form in, XML out).
    StsQuery,
    /// SQS, awsJson 1.0 with awsQueryCompatible error codes.
    SqsJson,
    /// SNS, awsQuery (form in, XML out); told from STS by the SigV4 scope's service.
    SnsQuery,
}

impl Protocol {
    pub(crate) fn service(self) -> &'static str {
        match self {
            Protocol::KmsJson => "kms",
            Protocol::CloudWatchCbor | Protocol::CloudWatchJson => "cloudwatch",
            Protocol::StsQuery => "sts",
            Protocol::SqsJson => "sqs",
            Protocol::SnsQuery => "sns",
        }
    }

    /// The protocol's name as the request log shows it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::KmsJson => "awsJson1_1",
            Protocol::CloudWatchCbor => "rpcv2Cbor",
            Protocol::CloudWatchJson => "awsJson1_0",
            Protocol::StsQuery | Protocol::SnsQuery => "awsQuery",
            Protocol::SqsJson => "awsJson1_0",
        }
    }

    /// Recognise an AWS request from its path and headers; the operation name comes with it
    /// (for awsQuery it is in the body, so None here).
    pub(crate) fn recognise(path: &str, headers: &HeaderMap) -> Option<(Protocol, Option<String>)> {
        if let Some(operation) = path.strip_prefix(CLOUDWATCH_CBOR_PREFIX) {
            return Some((Protocol::CloudWatchCbor, Some(operation.to_owned())));
        }
        let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok());
        if let Some(target) = target {
            if let Some(op) = target.strip_prefix(KMS_TARGET_PREFIX) {
                return Some((Protocol::KmsJson, Some(op.to_owned())));
            }
            if let Some(op) = target.strip_prefix(CLOUDWATCH_TARGET_PREFIX) {
                return Some((Protocol::CloudWatchJson, Some(op.to_owned())));
            }
            if let Some(op) = target.strip_prefix(SQS_TARGET_PREFIX) {
                return Some((Protocol::SqsJson, Some(op.to_owned())));
            }
            return None;
        }
        let form = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        let signed_for_sns = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|auth| auth.contains("/sns/aws4_request"));
        let query = if signed_for_sns {
            Protocol::SnsQuery
        } else {
            Protocol::StsQuery
        };
        (path == "/" && form).then_some((query, None))
    }
}

/// An AWS error as it goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// A client error (400).
    pub(crate) fn bad(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, code, message)
    }
}

/// The common errors, spelled as each protocol's service spells them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Common {
    MissingAuthentication,
    IncompleteSignature,
    UnknownAccessKey,
    SignatureMismatch,
    ExpiredToken,
    AccessDenied,
    Throttling,
    Internal,
    UnknownOperation,
    MalformedInput,
}

impl Common {
    pub(crate) fn error(self, protocol: Protocol, message: impl Into<String>) -> ApiError {
        if let Some((status, code)) = self.second_round_code(protocol) {
            return ApiError::new(status, code, message);
        }
        let json = protocol == Protocol::KmsJson;
        let (status, code) = match self {
            Common::MissingAuthentication if json => (400, "MissingAuthenticationTokenException"),
            Common::MissingAuthentication => (403, "MissingAuthenticationToken"),
            Common::IncompleteSignature if json => (400, "IncompleteSignatureException"),
            Common::IncompleteSignature => (403, "IncompleteSignature"),
            Common::UnknownAccessKey if json => (400, "UnrecognizedClientException"),
            Common::UnknownAccessKey => (403, "InvalidClientTokenId"),
            Common::SignatureMismatch if json => (400, "InvalidSignatureException"),
            Common::SignatureMismatch => (403, "SignatureDoesNotMatch"),
            Common::ExpiredToken if json => (400, "ExpiredTokenException"),
            Common::ExpiredToken => (403, "ExpiredToken"),
            Common::AccessDenied if json => (400, "AccessDeniedException"),
            Common::AccessDenied => (403, "AccessDenied"),
            Common::Throttling if protocol == Protocol::StsQuery => (400, "Throttling"),
            Common::Throttling => (400, "ThrottlingException"),
            Common::Internal if json => (500, "KMSInternalException"),
            Common::Internal => (500, "InternalFailure"),
            Common::UnknownOperation if json => (400, "UnknownOperationException"),
            Common::UnknownOperation => (400, "InvalidAction"),
            Common::MalformedInput if json => (400, "SerializationException"),
            Common::MalformedInput => (400, "MalformedInput"),
        };
        ApiError::new(status, code, message)
    }
}

impl Common {
    /// Where SNS and SQS spell a common error their own way (their service models).
    fn second_round_code(self, protocol: Protocol) -> Option<(u16, &'static str)> {
        match (protocol, self) {
            (Protocol::SnsQuery, Common::AccessDenied) => Some((403, "AuthorizationError")),
            (Protocol::SnsQuery, Common::Throttling) => Some((429, "Throttled")),
            (Protocol::SnsQuery, Common::Internal) => Some((500, "InternalError")),
            (Protocol::SqsJson, Common::Throttling) => Some((400, "RequestThrottled")),
            (Protocol::SqsJson, Common::MalformedInput) => Some((400, "InvalidParameterValue")),
            _ => None,
        }
    }
}

pub(crate) type HttpResponse = Response<Full<Bytes>>;

fn response(
    status: u16,
    content_type: &'static str,
    request_id: &str,
    body: Vec<u8>,
) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

fn content_type(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::KmsJson => "application/x-amz-json-1.1",
        Protocol::CloudWatchJson | Protocol::SqsJson => "application/x-amz-json-1.0",
        Protocol::CloudWatchCbor => "application/cbor",
        Protocol::StsQuery | Protocol::SnsQuery => "text/xml",
    }
}

/// A JSON or CBOR success. (STS successes are written by `sts.rs` through `xml_response`.)
pub(crate) fn success(protocol: Protocol, request_id: &str, output: &Value) -> HttpResponse {
    let body = match protocol {
        Protocol::CloudWatchCbor => output.to_cbor(),
        _ => output.to_json().to_string().into_bytes(),
    };
    let mut response = response(200, content_type(protocol), request_id, body);
    if protocol == Protocol::CloudWatchCbor {
        response
            .headers_mut()
            .insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
    }
    response
}

pub(crate) fn xml_response(request_id: &str, body: String) -> HttpResponse {
    response(200, "text/xml", request_id, body.into_bytes())
}

/// An error in the shape the protocol's clients parse.
pub(crate) fn failure(protocol: Protocol, request_id: &str, error: &ApiError) -> HttpResponse {
    let envelope = || {
        let error_type = match protocol {
            Protocol::SqsJson => crate::sqs::error_type(&error.code),
            _ => error.code.clone(),
        };
        Value::Map(vec![
            ("__type", Value::str(error_type)),
            ("message", Value::str(error.message.clone())),
        ])
    };
    let body = match protocol {
        Protocol::KmsJson | Protocol::CloudWatchJson | Protocol::SqsJson => {
            envelope().to_json().to_string().into_bytes()
        }
        Protocol::CloudWatchCbor => envelope().to_cbor(),
        Protocol::StsQuery | Protocol::SnsQuery => {
            let namespace = if protocol == Protocol::SnsQuery {
                crate::sns::SNS_NAMESPACE
            } else {
                STS_XMLNS
            };
            let kind = if error.status >= 500 {
                "Receiver"
            } else {
                "Sender"
            };
            format!(
                "<ErrorResponse xmlns=\"{namespace}\"><Error><Type>{kind}</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
                xml_escape(&error.code),
                xml_escape(&error.message),
                xml_escape(request_id)
            )
            .into_bytes()
        }
    };
    let mut response = response(error.status, content_type(protocol), request_id, body);
    let headers = response.headers_mut();
    if matches!(
        protocol,
        Protocol::CloudWatchCbor | Protocol::CloudWatchJson | Protocol::SqsJson
    ) {
        // CloudWatch and SQS are awsQueryCompatible: clients take the code from this header when present.
        let fault = if error.status >= 500 {
            "Receiver"
        } else {
            "Sender"
        };
        if let Ok(value) = HeaderValue::from_str(&format!("{};{fault}", error.code)) {
            headers.insert("x-amzn-query-error", value);
        }
    }
    if protocol == Protocol::CloudWatchCbor {
        headers.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
    }
    response
}

pub(crate) fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) const STS_NAMESPACE: &str = STS_XMLNS;

/// A request id in the AWS shape (a UUID v4 layout).
pub(crate) fn new_request_id() -> String {
    let hex: String = (0..32)
        .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap_or('0'))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_each_protocol() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("TrentService.DisconnectCustomKeyStore"),
        );
        assert_eq!(
            Protocol::recognise("/", &headers),
            Some((Protocol::KmsJson, Some("DisconnectCustomKeyStore".into())))
        );
        let none = HeaderMap::new();
        assert_eq!(
            Protocol::recognise(
                "/service/GraniteServiceVersion20100801/operation/DescribeAlarms",
                &none
            ),
            Some((Protocol::CloudWatchCbor, Some("DescribeAlarms".into())))
        );
        let mut form = HeaderMap::new();
        form.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        assert_eq!(
            Protocol::recognise("/", &form),
            Some((Protocol::StsQuery, None))
        );
        assert_eq!(Protocol::recognise("/", &none), None);
    }

    #[test]
    fn sts_errors_are_xml_error_responses() {
        let error = Common::AccessDenied.error(Protocol::StsQuery, "no <way>");
        assert_eq!((error.status, error.code.as_str()), (403, "AccessDenied"));
        let response = failure(Protocol::StsQuery, "rid", &error);
        assert_eq!(response.status(), 403);
    }
}
