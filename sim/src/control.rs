//! The JSON control API under `/_sim/` on the same port: read the world and the request log,
//! replace fault rules, force key store and alarm states. For the demo and shell use; the Rust
//! API (`SimHandle`) does the same in-process. Not signed, loopback only.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::faults::Faults;
use crate::protocol::HttpResponse;
use crate::state::{RequestRecord, Sim, now_us};

/// `/_sim/sqs`, `/_sim/sns`, `/_sim/metrics` and their `SimHandle` methods.
mod messaging;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyStoreStateBody {
    account: String,
    region: String,
    custom_key_store_id: String,
    connection_state: String,
    #[serde(default)]
    connection_error_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmStateBody {
    account: String,
    region: String,
    alarm_name: String,
    state_value: String,
    #[serde(default)]
    state_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmRevertBody {
    account: String,
    region: String,
    alarm_name: String,
    set_state_revert_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyStateBody {
    account: String,
    region: String,
    key_id: String,
    key_state: String,
    /// Schedule the change this many ms from now instead of now.
    #[serde(default)]
    after_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddKeyStoreBody {
    account: String,
    region: String,
    #[serde(flatten)]
    store: AddedStore,
}

/// `KeyStoreDecl` with an optional id (flatten cannot be combined with deny_unknown_fields on
/// the inner type, so the fields are listed again).
#[derive(Deserialize)]
struct AddedStore {
    #[serde(default)]
    id: String,
    name: String,
    #[serde(rename = "type")]
    store_type: crate::world::KeyStoreType,
    #[serde(default)]
    connection_state: Option<crate::world::ConnectionState>,
    #[serde(default)]
    connection_error_code: Option<String>,
    #[serde(default)]
    cloud_hsm_cluster_id: Option<String>,
    #[serde(default)]
    xks_proxy_uri_endpoint: Option<String>,
}

fn json(status: u16, value: &impl serde::Serialize) -> HttpResponse {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: u16, message: impl Into<String>) -> HttpResponse {
    json(status, &serde_json::json!({ "error": message.into() }))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

fn query(parts: &Parts) -> HashMap<String, String> {
    form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn log_change(
    sim: &Sim,
    operation: &str,
    account: Option<&str>,
    region: Option<&str>,
    target: Option<&str>,
    status: u16,
) {
    sim.record(RequestRecord {
        ts_us: now_us(),
        service: "sim".to_owned(),
        protocol: "control".to_owned(),
        operation: operation.to_owned(),
        account: account.map(str::to_owned),
        region: region.map(str::to_owned),
        target: target.map(str::to_owned),
        status,
        error_code: None,
        app: None,
    });
}

pub(crate) fn handle(sim: &Sim, parts: &Parts, body: &[u8]) -> HttpResponse {
    let path = parts.uri.path().trim_end_matches('/');
    match (&parts.method, path) {
        (&Method::GET, "/_sim/health") => json(200, &serde_json::json!({ "status": "ok" })),
        (&Method::GET, "/_sim/keys") => {
            let query = query(parts);
            let (Some(account), Some(region)) = (query.get("account"), query.get("region")) else {
                return error(400, "query parameters account and region are required");
            };
            json(200, &sim.keys(account, region))
        }
        (&Method::POST, "/_sim/keys/state") => set_key_state(sim, body),
        (&Method::POST, "/_sim/key-stores") => add_key_store(sim, body),
        (&Method::POST, "/_sim/alarms/revert") => set_alarm_revert(sim, body),
        (&Method::GET, "/_sim/world") => json(200, &sim.world),
        (&Method::GET, "/_sim/requests") => json(200, &sim.requests()),
        (&Method::DELETE, "/_sim/requests") | (&Method::POST, "/_sim/requests/clear") => {
            sim.clear_requests();
            json(200, &serde_json::json!({ "cleared": true }))
        }
        (&Method::POST, "/_sim/sessions/forget") => {
            let forgotten = sim.forget_sessions();
            log_change(sim, "ForgetSessions", None, None, None, 200);
            json(200, &serde_json::json!({ "forgotten": forgotten }))
        }
        (&Method::GET, "/_sim/faults") => json(200, &sim.faults()),
        (&Method::POST | &Method::PUT, "/_sim/faults") => match parse::<Faults>(body) {
            Ok(faults) => {
                let rules = faults.rules.len();
                sim.set_faults(faults);
                log_change(sim, "SetFaults", None, None, None, 200);
                json(200, &serde_json::json!({ "rules": rules }))
            }
            Err(message) => error(400, message),
        },
        (&Method::GET, "/_sim/key-stores") | (&Method::GET, "/_sim/alarms") => {
            let query = query(parts);
            let (Some(account), Some(region)) = (query.get("account"), query.get("region")) else {
                return error(400, "query parameters account and region are required");
            };
            if path == "/_sim/key-stores" {
                json(200, &sim.key_stores(account, region))
            } else {
                json(200, &sim.alarms(account, region))
            }
        }
        (&Method::POST, "/_sim/key-stores/state") => {
            let body: KeyStoreStateBody = match parse(body) {
                Ok(body) => body,
                Err(message) => return error(400, message),
            };
            match sim.set_connection_state(
                &body.account,
                &body.region,
                &body.custom_key_store_id,
                &body.connection_state,
                body.connection_error_code,
            ) {
                Ok(()) => {
                    log_change(
                        sim,
                        "SetConnectionState",
                        Some(&body.account),
                        Some(&body.region),
                        Some(&body.custom_key_store_id),
                        200,
                    );
                    json(200, &sim.key_stores(&body.account, &body.region))
                }
                Err(err) => error(status_for(&err), err.to_string()),
            }
        }
        (&Method::POST, "/_sim/alarms/state") => {
            let body: AlarmStateBody = match parse(body) {
                Ok(body) => body,
                Err(message) => return error(400, message),
            };
            let reason = body
                .state_reason
                .unwrap_or_else(|| "set through the kms-sim control API".to_owned());
            match sim.set_alarm_state(
                &body.account,
                &body.region,
                &body.alarm_name,
                &body.state_value,
                &reason,
            ) {
                Ok(()) => {
                    log_change(
                        sim,
                        "SetAlarmState",
                        Some(&body.account),
                        Some(&body.region),
                        Some(&body.alarm_name),
                        200,
                    );
                    json(200, &sim.alarms(&body.account, &body.region))
                }
                Err(err) => error(status_for(&err), err.to_string()),
            }
        }
        _ if messaging::is_control_path(path) => messaging::control(sim, parts, path, body),
        _ => error(404, format!("no control endpoint {} {path}", parts.method)),
    }
}

fn status_for(err: &crate::SimError) -> u16 {
    match err {
        crate::SimError::InvalidValue { .. } => 400,
        crate::SimError::KeyStoreRefused { .. } => 409,
        _ => 404,
    }
}

fn set_key_state(sim: &Sim, body: &[u8]) -> HttpResponse {
    let body: KeyStateBody = match parse(body) {
        Ok(body) => body,
        Err(message) => return error(400, message),
    };
    match sim.set_key_state(
        &body.account,
        &body.region,
        &body.key_id,
        &body.key_state,
        body.after_ms,
    ) {
        Ok(()) => {
            log_change(
                sim,
                "SetKeyState",
                Some(&body.account),
                Some(&body.region),
                Some(&body.key_id),
                200,
            );
            json(200, &sim.keys(&body.account, &body.region))
        }
        Err(err) => error(status_for(&err), err.to_string()),
    }
}

fn add_key_store(sim: &Sim, body: &[u8]) -> HttpResponse {
    let body: AddKeyStoreBody = match parse(body) {
        Ok(body) => body,
        Err(message) => return error(400, message),
    };
    let store = body.store;
    let decl = crate::world::KeyStoreDecl {
        id: store.id,
        name: store.name,
        store_type: store.store_type,
        connection_state: store
            .connection_state
            .unwrap_or(crate::world::ConnectionState::Connected),
        connection_error_code: store.connection_error_code,
        cloud_hsm_cluster_id: store.cloud_hsm_cluster_id,
        xks_proxy_uri_endpoint: store.xks_proxy_uri_endpoint,
        creation_date: None,
    };
    match sim.add_key_store(&body.account, &body.region, &decl) {
        Ok(view) => {
            log_change(
                sim,
                "AddKeyStore",
                Some(&body.account),
                Some(&body.region),
                Some(&view.custom_key_store_id),
                200,
            );
            json(200, &view)
        }
        Err(err) => error(status_for(&err), err.to_string()),
    }
}

fn set_alarm_revert(sim: &Sim, body: &[u8]) -> HttpResponse {
    let body: AlarmRevertBody = match parse(body) {
        Ok(body) => body,
        Err(message) => return error(400, message),
    };
    match sim.set_alarm_revert_ms(
        &body.account,
        &body.region,
        &body.alarm_name,
        body.set_state_revert_ms,
    ) {
        Ok(()) => {
            log_change(
                sim,
                "SetAlarmRevert",
                Some(&body.account),
                Some(&body.region),
                Some(&body.alarm_name),
                200,
            );
            json(
                200,
                &serde_json::json!({ "set_state_revert_ms": body.set_state_revert_ms }),
            )
        }
        Err(err) => error(status_for(&err), err.to_string()),
    }
}
