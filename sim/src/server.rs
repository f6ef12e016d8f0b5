//! The HTTP server: accepts loopback connections, recognises each request (AWS protocol or the
//! `/_sim/` control API), authenticates it with SigV4, applies fault rules and quotas, dispatches
//! to the service module, writes the response and the request log. Owns no service logic.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::faults::{RequestEffects, Selector};
use crate::protocol::{
    ApiError, Common, HttpResponse, Protocol, failure, new_request_id, success, xml_response,
};
use crate::sigv4::{Authorization, SigError};
use crate::state::{Identity, RequestRecord, Sim, now_us};
use crate::value::cbor_to_json;
use crate::{SimError, cloudwatch, control, kms, metrics, sns, sqs, sts};

/// Largest request body accepted: an SQS message may be 1 MiB, more once JSON-escaped; the
/// other operations' inputs are a few KiB.
const MAX_BODY_BYTES: usize = 3 << 20;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Returned to hyper to close a connection without answering (the `drop_connection` fault).
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by a kms-sim fault rule")]
pub(crate) struct DroppedConnection;

/// Serve `sim` on `listener` until `shutdown` completes; open connections are then closed.
pub(crate) async fn run(
    sim: Arc<Sim>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimError> {
    if let Ok(addr) = listener.local_addr() {
        sim.queues.set_endpoint(format!("http://{addr}"));
    }
    // Every connection task; dropping the set when we return aborts the ones still open.
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // The owner asked us to stop: leave the loop, which closes every connection.
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(source) => {
                        warn!(cause = %source, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                // Small request/response pairs: do not let Nagle delay them.
                let _ = stream.set_nodelay(true);
                let sim = Arc::clone(&sim);
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&sim), request));
                    if let Err(err) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        debug!(%peer, cause = %err, "connection ended");
                    }
                });
            }
            // A connection finished: reap it so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    Ok(())
}

/// What processing an AWS request came to.
enum Outcome {
    Answer(HttpResponse),
    Refuse(ApiError),
    Drop,
}

async fn handle(
    sim: Arc<Sim>,
    request: Request<Incoming>,
) -> Result<HttpResponse, DroppedConnection> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(plain(413, "request body too large or unreadable")),
    };
    let path = parts.uri.path();
    if path == "/_sim" || path.starts_with("/_sim/") {
        return Ok(control::handle(&sim, &parts, &body));
    }
    let Some((protocol, operation)) = Protocol::recognise(path, &parts.headers) else {
        return Ok(plain(
            404,
            "kms-sim: not a KMS (awsJson1_1), CloudWatch (rpc-v2-cbor/awsJson1_0), SQS (awsJson1_0), SNS or STS (awsQuery) request",
        ));
    };
    let request_id = new_request_id();
    let mut record = RequestRecord {
        ts_us: now_us(),
        service: protocol.service().to_owned(),
        protocol: protocol.name().to_owned(),
        operation: operation.clone().unwrap_or_default(),
        account: None,
        region: None,
        target: None,
        status: 0,
        error_code: None,
        app: app_name(&parts.headers),
    };
    let outcome = process(
        &sim,
        protocol,
        operation,
        &parts,
        &body,
        &request_id,
        &mut record,
    )
    .await;
    let response = match outcome {
        Outcome::Answer(response) => response,
        Outcome::Refuse(error) => {
            record.error_code = Some(error.code.clone());
            failure(protocol, &request_id, &error)
        }
        Outcome::Drop => {
            record.error_code = Some("ConnectionDropped".to_owned());
            log(&record);
            sim.record(record);
            return Err(DroppedConnection);
        }
    };
    record.status = response.status().as_u16();
    log(&record);
    sim.record(record);
    Ok(response)
}

/// The `app/NAME` token of the SDK's `x-amz-user-agent` (or plain `user-agent`) header.
fn app_name(headers: &hyper::HeaderMap) -> Option<String> {
    ["x-amz-user-agent", "user-agent"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .flat_map(str::split_whitespace)
        .find_map(|token| token.strip_prefix("app/"))
        .map(str::to_owned)
}

fn log(record: &RequestRecord) {
    info!(
        service = %record.service,
        operation = %record.operation,
        protocol = %record.protocol,
        account = record.account.as_deref().unwrap_or("-"),
        region = record.region.as_deref().unwrap_or("-"),
        target = record.target.as_deref().unwrap_or("-"),
        status = record.status,
        error = record.error_code.as_deref().unwrap_or("-"),
        "request"
    );
}

async fn process(
    sim: &Sim,
    protocol: Protocol,
    operation: Option<String>,
    parts: &Parts,
    body: &[u8],
    request_id: &str,
    record: &mut RequestRecord,
) -> Outcome {
    // 1. Decode the input (and, for awsQuery, find the operation in it).
    let (input, form) = match decode_input(protocol, parts, body) {
        Ok(decoded) => decoded,
        Err(error) => return Outcome::Refuse(error),
    };
    let operation = match operation.or_else(|| form.get("Action").cloned()) {
        Some(operation) => operation,
        None => return Outcome::Refuse(ApiError::bad("MissingAction", "Action is missing")),
    };
    record.operation = operation.clone();
    record.target = match protocol {
        Protocol::KmsJson => kms::target(&input),
        Protocol::CloudWatchCbor | Protocol::CloudWatchJson => cloudwatch::target(&input),
        Protocol::StsQuery => form.get("RoleArn").cloned(),
        Protocol::SqsJson => sqs::target(&input),
        Protocol::SnsQuery => sns::target(&form),
    };

    // 2. Authenticate: region from the credential scope, account from the access key.
    let (identity, region) = match authenticate(sim, protocol, parts, body) {
        Ok(found) => found,
        Err(error) => return Outcome::Refuse(error),
    };
    record.account = Some(identity.account.clone());
    record.region = Some(region.clone());
    let account = identity.account.as_str();

    // 3. Fault rules, then the quota.
    let store_id = match protocol {
        Protocol::KmsJson => record.target.clone(),
        _ => None,
    };
    let selector = Selector {
        account: Some(account),
        region: Some(&region),
        operation: &operation,
        custom_key_store_id: store_id.as_deref(),
        key_id: None,
    };
    let effects = RequestEffects::roll(&sim.lock().faults, &selector);
    if effects.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(effects.latency_ms)).await;
    }
    if effects.drop_connection {
        return Outcome::Drop;
    }
    if effects.access_denied {
        let message = format!(
            "User: {} is not authorized to perform: {}:{operation} because of an injected fault",
            identity.arn,
            protocol.service()
        );
        return Outcome::Refuse(Common::AccessDenied.error(protocol, message));
    }
    if effects.internal_error {
        return Outcome::Refuse(Common::Internal.error(protocol, "injected internal error"));
    }
    if effects.throttle {
        return Outcome::Refuse(Common::Throttling.error(protocol, "Rate exceeded"));
    }
    let allowed = match second_round_rate(sim, protocol, &operation, &region) {
        Some(rate) => sim.take_token_at(account, &region, &operation, rate),
        None => sim.take_token(account, &region, &operation),
    };
    if !allowed {
        return Outcome::Refuse(Common::Throttling.error(protocol, "Rate exceeded"));
    }

    // 4. The operation itself.
    let call = Call {
        protocol,
        operation: &operation,
        account,
        region: &region,
        user_id: &identity.user_id,
        input: &input,
        form: &form,
        request_id,
    };
    let cloudwatch = matches!(
        protocol,
        Protocol::CloudWatchCbor | Protocol::CloudWatchJson
    );
    if cloudwatch && operation == "PutMetricData" {
        return second_round(sim, &call).await;
    }
    let result = match protocol {
        Protocol::SqsJson | Protocol::SnsQuery => return second_round(sim, &call).await,
        Protocol::KmsJson => kms::handle(sim, account, &region, &operation, &input)
            .map(|output| success(protocol, request_id, &output)),
        Protocol::CloudWatchCbor | Protocol::CloudWatchJson => {
            cloudwatch::handle(sim, protocol, account, &region, &operation, &input)
                .map(|output| success(protocol, request_id, &output))
        }
        Protocol::StsQuery => sts::handle(sim, &identity, &operation, &form, request_id)
            .map(|xml| xml_response(request_id, xml)),
    };
    match result {
        Ok(response) => Outcome::Answer(response),
        Err(error) => Outcome::Refuse(error),
    }
}

/// The operation input of a request body: JSON (awsJson, CBOR decoded to JSON) or, for
/// awsQuery, the form (with an empty JSON object).
fn decode_input(
    protocol: Protocol,
    parts: &Parts,
    body: &[u8],
) -> Result<(Json, HashMap<String, String>), ApiError> {
    let mut form = HashMap::new();
    // The SDKs and the CLI gzip PutMetricData bodies past 10 KiB (`Content-Encoding: gzip`);
    // SigV4 covers the bytes as sent, so only the reading uses the inflated ones.
    let inflated = match inflate(parts, body) {
        Ok(inflated) => inflated,
        Err(message) => return Err(Common::MalformedInput.error(protocol, message)),
    };
    let content: &[u8] = inflated.as_deref().unwrap_or(body);
    let input: Json = match protocol {
        Protocol::KmsJson | Protocol::CloudWatchJson | Protocol::SqsJson if content.is_empty() => {
            Json::Object(Default::default())
        }
        Protocol::KmsJson | Protocol::CloudWatchJson | Protocol::SqsJson => {
            match serde_json::from_slice(content) {
                Ok(json @ Json::Object(_)) => json,
                _ => {
                    return Err(
                        Common::MalformedInput.error(protocol, "request body is not a JSON object")
                    );
                }
            }
        }
        Protocol::CloudWatchCbor => match cbor_to_json(content) {
            Ok(json @ Json::Object(_)) => json,
            Ok(_) => {
                return Err(
                    Common::MalformedInput.error(protocol, "request body is not a CBOR map")
                );
            }
            Err(cause) => {
                return Err(Common::MalformedInput
                    .error(protocol, format!("request body is not valid CBOR: {cause}")));
            }
        },
        Protocol::StsQuery | Protocol::SnsQuery => {
            form = form_urlencoded::parse(content).into_owned().collect();
            Json::Object(Default::default())
        }
    };
    Ok((input, form))
}

/// One authenticated request of the second round's operations (SQS, SNS, PutMetricData).
struct Call<'a> {
    protocol: Protocol,
    operation: &'a str,
    account: &'a str,
    region: &'a str,
    /// The caller's user id: SQS shows it as a message's SenderId.
    user_id: &'a str,
    input: &'a Json,
    form: &'a HashMap<String, String>,
    request_id: &'a str,
}

async fn second_round(sim: &Sim, call: &Call<'_>) -> Outcome {
    let (protocol, request_id) = (call.protocol, call.request_id);
    let result = match protocol {
        Protocol::SqsJson => {
            let handled = sqs::handle(
                sim,
                call.account,
                call.region,
                call.user_id,
                call.operation,
                call.input,
            );
            handled
                .await
                .map(|output| success(protocol, request_id, &output))
        }
        Protocol::SnsQuery => {
            let handled = sns::handle(
                sim,
                call.account,
                call.region,
                call.operation,
                call.form,
                request_id,
            );
            handled.await.map(|xml| xml_response(request_id, xml))
        }
        _ => metrics::put_metric_data(&sim.metrics, call.account, call.region, call.input)
            .map(|output| success(protocol, request_id, &output))
            .map_err(sqs::Failure::Api),
    };
    match result {
        Ok(response) => Outcome::Answer(response),
        Err(sqs::Failure::Api(error)) => Outcome::Refuse(error),
        Err(sqs::Failure::Drop) => Outcome::Drop,
    }
}

/// The body inflated when its `Content-Encoding` is gzip (None: as sent).
fn inflate(parts: &Parts, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read as _;
    let gzip = parts
        .headers
        .get_all("content-encoding")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.trim().eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(None);
    }
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|err| format!("request body is not valid gzip: {err}"))?;
    if inflated.len() > MAX_BODY_BYTES {
        return Err("inflated request body is too large".to_owned());
    }
    Ok(Some(inflated))
}

/// The SigV4 signing name each protocol's service uses.
fn signing_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::KmsJson => "kms",
        Protocol::CloudWatchCbor | Protocol::CloudWatchJson => "monitoring",
        Protocol::StsQuery => "sts",
        Protocol::SqsJson => "sqs",
        Protocol::SnsQuery => "sns",
    }
}

/// The default quota of the SNS, SQS and PutMetricData operations, which is not the KMS-sized
/// `rate_limit_rps` (None: that one applies). A world's `operation_rate_limits` entry still
/// wins, and `rate_limit_rps: 0` still turns every quota off.
fn second_round_rate(sim: &Sim, protocol: Protocol, operation: &str, region: &str) -> Option<f64> {
    let settings = &sim.world.settings;
    let default = match (protocol, operation) {
        // PutMetricData: 500 transactions per second per account and region (CloudWatch quotas).
        (Protocol::CloudWatchCbor | Protocol::CloudWatchJson, "PutMetricData") => 500.0,
        // SNS Publish: 30,000 TPS in us-east-1, 9,000 in us-west-2 and eu-west-1, 1,500 elsewhere;
        // the other SNS APIs modelled here are far lower (SNS quotas).
        (Protocol::SnsQuery, "Publish") => match region {
            "us-east-1" => 30_000.0,
            "us-west-2" | "eu-west-1" => 9_000.0,
            _ => 1_500.0,
        },
        (Protocol::SnsQuery, "ListTopics") => 30.0,
        (Protocol::SnsQuery, _) => 100.0,
        // SQS standard queues: a nearly unlimited number of API calls per second.
        (Protocol::SqsJson, _) => 0.0,
        _ => return None,
    };
    if settings.rate_limit_rps <= 0.0 {
        return Some(0.0);
    }
    Some(
        settings
            .operation_rate_limits
            .get(operation)
            .copied()
            .unwrap_or(default),
    )
}

fn authenticate(
    sim: &Sim,
    protocol: Protocol,
    parts: &Parts,
    body: &[u8],
) -> Result<(Identity, String), ApiError> {
    let sig_error = |error: SigError| match error {
        SigError::Missing => {
            Common::MissingAuthentication.error(protocol, "Request is missing Authentication Token")
        }
        SigError::Malformed(reason) => Common::IncompleteSignature.error(protocol, reason),
        SigError::Mismatch => {
            Common::SignatureMismatch.error(protocol, SigError::Mismatch.to_string())
        }
    };
    let header = parts
        .headers
        .get("authorization")
        .ok_or(SigError::Missing)
        .map_err(sig_error)?
        .to_str()
        .map_err(|_| {
            sig_error(SigError::Malformed(
                "authorization header is not ASCII".to_owned(),
            ))
        })?;
    let auth = Authorization::parse(header).map_err(sig_error)?;
    let expected_service = signing_name(protocol);
    if auth.service != expected_service {
        return Err(Common::SignatureMismatch.error(
            protocol,
            format!("Credential should be scoped to correct service: '{expected_service}'."),
        ));
    }
    let invalid_token = || {
        Common::UnknownAccessKey.error(
            protocol,
            "The security token included in the request is invalid.",
        )
    };
    let identity = sim
        .identity(&auth.access_key_id)
        .ok_or_else(invalid_token)?;
    if let Some(token) = &identity.session_token {
        let sent = parts
            .headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok());
        if sent != Some(token.as_str()) {
            return Err(invalid_token());
        }
    }
    if identity
        .expires_us
        .is_some_and(|expires| expires <= now_us())
    {
        return Err(Common::ExpiredToken.error(
            protocol,
            "The security token included in the request is expired",
        ));
    }
    let query = parts.uri.query().unwrap_or("");
    auth.verify(
        &identity.secret_access_key,
        parts.method.as_str(),
        parts.uri.path(),
        query,
        &parts.headers,
        body,
    )
    .map_err(sig_error)?;
    Ok((identity, auth.region))
}

pub(crate) fn plain(status: u16, text: &str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
