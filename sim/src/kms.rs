//! KMS custom key store operations: DescribeCustomKeyStores, DisconnectCustomKeyStore,
//! ConnectCustomKeyStore, CreateCustomKeyStore, with the KMS state machine and error codes, and
//! stores added at run time; the standard-key operations are passed on to `keys`.
//! Input arrives as JSON, output leaves as a `Value`; this file never sees HTTP or signatures.

use serde_json::Value as Json;

use crate::SimError;
use crate::faults::Selector;
use crate::input::Input;
use crate::protocol::{ApiError, Common, Protocol};
use crate::state::{
    Sim, StoreState, StoreView, Transition, now_us, random_key_store_id, us_to_secs,
};
use crate::value::Value;
use crate::world::{ConnectionState, KeyStoreDecl, KeyStoreType, is_account_id, is_key_store_id};

/// DescribeCustomKeyStores returns at most this many entries per page (the KMS maximum).
const MAX_LIMIT: i64 = 1000;
/// The URI path every XKS proxy serves (KMS default shape `/kms/xks/v1`).
const DEFAULT_XKS_PATH: &str = "/kms/xks/v1";

/// The custom key store id (or, for the standard-key operations, the KeyId) a request names,
/// for the request log and fault selection.
pub(crate) fn target(input: &Json) -> Option<String> {
    input
        .get("CustomKeyStoreId")
        .or_else(|| input.get("KeyId"))
        .and_then(Json::as_str)
        .map(str::to_owned)
}

pub(crate) fn handle(
    sim: &Sim,
    account: &str,
    region: &str,
    operation: &str,
    json: &Json,
) -> Result<Value, ApiError> {
    let input = Input {
        json,
        validation_code: "ValidationException",
    };
    match operation {
        "DescribeCustomKeyStores" => describe(sim, account, region, &input),
        "DisconnectCustomKeyStore" => disconnect(sim, account, region, &input),
        "ConnectCustomKeyStore" => connect(sim, account, region, &input),
        "CreateCustomKeyStore" => create(sim, account, region, &input),
        op if crate::keys::is_key_operation(op) => {
            crate::keys::handle(sim, account, region, op, &input)
        }
        other => Err(Common::UnknownOperation.error(
            Protocol::KmsJson,
            format!("operation {other} is not supported by kms-sim"),
        )),
    }
}

fn not_found(message: String) -> ApiError {
    ApiError::bad("CustomKeyStoreNotFoundException", message)
}

fn describe(sim: &Sim, account: &str, region: &str, input: &Input<'_>) -> Result<Value, ApiError> {
    let id_filter = input.opt_str("CustomKeyStoreId")?;
    let name_filter = input.opt_str("CustomKeyStoreName")?;
    let limit = match input.opt_int("Limit")? {
        None => MAX_LIMIT,
        Some(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
        Some(limit) => {
            return Err(ApiError::bad(
                "ValidationException",
                format!(
                    "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 1000"
                ),
            ));
        }
    } as usize;
    let marker = input.opt_str("Marker")?;
    let now = now_us();
    let state = sim.lock();
    let settings_lag = sim.world.settings.consistency_lag_ms;
    let stores: Vec<&StoreState> = state
        .region(account, region)
        .map(|r| r.key_stores.iter().collect())
        .unwrap_or_default();
    let selected: Vec<&StoreState> = stores
        .into_iter()
        .filter(|s| id_filter.is_none_or(|id| s.id == id))
        .filter(|s| name_filter.is_none_or(|name| s.name == name))
        .collect();
    if selected.is_empty() {
        if let Some(id) = id_filter {
            return Err(not_found(format!(
                "Custom key store {id} does not exist in account {account} region {region}"
            )));
        }
        if let Some(name) = name_filter {
            return Err(not_found(format!(
                "Custom key store with name {name} does not exist in account {account} region {region}"
            )));
        }
    }
    let start = match marker {
        None => 0,
        Some(marker) => selected
            .iter()
            .position(|s| s.id == marker)
            .ok_or_else(|| ApiError::bad("InvalidMarkerException", "The marker is not valid"))?,
    };
    let end = (start + limit).min(selected.len());
    let entries = selected[start..end]
        .iter()
        .map(|store| {
            let selector = Selector {
                account: Some(account),
                region: Some(region),
                operation: "DescribeCustomKeyStores",
                custom_key_store_id: Some(&store.id),
                key_id: None,
            };
            let lag_ms = state
                .faults
                .matching(&selector)
                .find_map(|rule| rule.consistency_lag_ms)
                .unwrap_or(settings_lag);
            entry(store, now.saturating_sub(lag_ms.saturating_mul(1000)))
        })
        .collect();
    let mut output = vec![("CustomKeyStores", Value::List(entries))];
    let truncated = end < selected.len();
    if truncated {
        output.push(("NextMarker", Value::str(selected[end].id.clone())));
    }
    output.push(("Truncated", Value::Bool(truncated)));
    Ok(Value::Map(output))
}

fn entry(store: &StoreState, seen_at_us: u64) -> Value {
    let seen = store.at(seen_at_us);
    let mut fields = vec![
        ("CustomKeyStoreId", Value::str(store.id.clone())),
        ("CustomKeyStoreName", Value::str(store.name.clone())),
        ("CustomKeyStoreType", Value::str(store.store_type.as_str())),
        ("ConnectionState", Value::str(seen.state.as_str())),
    ];
    if seen.state == ConnectionState::Failed
        && let Some(code) = &seen.error_code
    {
        fields.push(("ConnectionErrorCode", Value::str(code.clone())));
    }
    fields.push(("CreationDate", Value::Time(store.creation_date)));
    let suffix = &store.id[4..];
    match store.store_type {
        KeyStoreType::AwsCloudHsm => {
            let cluster = store
                .cloud_hsm_cluster_id
                .clone()
                .unwrap_or_else(|| format!("cluster-{}", &suffix[..11]));
            fields.push(("CloudHsmClusterId", Value::str(cluster)));
            fields.push((
                "TrustAnchorCertificate",
                Value::str("-----BEGIN CERTIFICATE-----\nkms-sim\n-----END CERTIFICATE-----"),
            ));
        }
        KeyStoreType::ExternalKeyStore => {
            let endpoint = store
                .xks_proxy_uri_endpoint
                .clone()
                .unwrap_or_else(|| "https://xks.example.com".to_owned());
            fields.push((
                "XksProxyConfiguration",
                Value::Map(vec![
                    ("Connectivity", Value::str("PUBLIC_ENDPOINT")),
                    (
                        "AccessKeyId",
                        Value::str(format!("XKSSIM{}", suffix.to_uppercase())),
                    ),
                    ("UriEndpoint", Value::str(endpoint)),
                    ("UriPath", Value::str(DEFAULT_XKS_PATH)),
                ]),
            ));
        }
    }
    Value::Map(fields)
}

fn invalid_state(id: &str, state: ConnectionState, operation: &str) -> ApiError {
    ApiError::bad(
        "CustomKeyStoreInvalidStateException",
        format!(
            "Custom key store {id} is {}; {operation} is not valid in that state",
            state.as_str()
        ),
    )
}

fn disconnect(
    sim: &Sim,
    account: &str,
    region: &str,
    input: &Input<'_>,
) -> Result<Value, ApiError> {
    let id = input.req_str("CustomKeyStoreId")?;
    let now = now_us();
    let settings_delay = sim.world.settings.transition_delay_ms;
    let mut state = sim.lock();
    let selector = Selector {
        account: Some(account),
        region: Some(region),
        operation: "DisconnectCustomKeyStore",
        custom_key_store_id: Some(id),
        key_id: None,
    };
    let delay_ms = state.transition_delay_ms(settings_delay, &selector);
    let stuck = state
        .faults
        .matching(&selector)
        .any(|rule| rule.stuck_disconnecting);
    let store = find_store(&mut state, account, region, id)?;
    let current = store.at(now).state;
    match current {
        ConnectionState::Disconnecting | ConnectionState::Disconnected => {
            return Err(invalid_state(id, current, "DisconnectCustomKeyStore"));
        }
        ConnectionState::Connected | ConnectionState::Connecting | ConnectionState::Failed => {}
    }
    let mut steps = vec![Transition {
        at_us: now,
        state: ConnectionState::Disconnecting,
        error_code: None,
    }];
    if !stuck {
        steps.push(Transition {
            at_us: now + delay_ms * 1000,
            state: ConnectionState::Disconnected,
            error_code: None,
        });
    }
    store.begin(now, steps);
    Ok(Value::Map(vec![]))
}

fn connect(sim: &Sim, account: &str, region: &str, input: &Input<'_>) -> Result<Value, ApiError> {
    let id = input.req_str("CustomKeyStoreId")?;
    let now = now_us();
    let settings_delay = sim.world.settings.transition_delay_ms;
    let mut state = sim.lock();
    let selector = Selector {
        account: Some(account),
        region: Some(region),
        operation: "ConnectCustomKeyStore",
        custom_key_store_id: Some(id),
        key_id: None,
    };
    let delay_ms = state.transition_delay_ms(settings_delay, &selector);
    let fail = state
        .faults
        .matching(&selector)
        .any(|rule| rule.fail_on_connect);
    let store = find_store(&mut state, account, region, id)?;
    let current = store.at(now).state;
    match current {
        ConnectionState::Disconnecting | ConnectionState::Failed => {
            return Err(invalid_state(id, current, "ConnectCustomKeyStore"));
        }
        // Already connected or on its way: KMS accepts the call and changes nothing.
        ConnectionState::Connected | ConnectionState::Connecting => {}
        ConnectionState::Disconnected => {
            let end = if fail {
                Transition {
                    at_us: now + delay_ms * 1000,
                    state: ConnectionState::Failed,
                    error_code: Some(store.default_error_code().to_owned()),
                }
            } else {
                Transition {
                    at_us: now + delay_ms * 1000,
                    state: ConnectionState::Connected,
                    error_code: None,
                }
            };
            let start = Transition {
                at_us: now,
                state: ConnectionState::Connecting,
                error_code: None,
            };
            store.begin(now, vec![start, end]);
        }
    }
    Ok(Value::Map(vec![]))
}

fn find_store<'s>(
    state: &'s mut crate::state::State,
    account: &str,
    region: &str,
    id: &str,
) -> Result<&'s mut StoreState, ApiError> {
    state
        .region_mut(account, region)
        .key_stores
        .iter_mut()
        .find(|s| s.id == id)
        .ok_or_else(|| {
            not_found(format!(
                "Custom key store {id} does not exist in account {account} region {region}"
            ))
        })
}

fn create(sim: &Sim, account: &str, region: &str, input: &Input<'_>) -> Result<Value, ApiError> {
    let name = input.req_str("CustomKeyStoreName")?;
    let store_type = match input.opt_str("CustomKeyStoreType")? {
        None => KeyStoreType::AwsCloudHsm,
        Some(text) => KeyStoreType::parse(text).ok_or_else(|| {
            ApiError::bad(
                "ValidationException",
                format!("CustomKeyStoreType {text} is not AWS_CLOUDHSM or EXTERNAL_KEY_STORE"),
            )
        })?,
    };
    let cluster = input.opt_str("CloudHsmClusterId")?;
    let endpoint = input.opt_str("XksProxyUriEndpoint")?;
    match store_type {
        KeyStoreType::AwsCloudHsm if cluster.is_none() => {
            return Err(ApiError::bad(
                "ValidationException",
                "CloudHsmClusterId is required for an AWS_CLOUDHSM key store",
            ));
        }
        KeyStoreType::ExternalKeyStore if endpoint.is_none() => {
            return Err(ApiError::bad(
                "ValidationException",
                "XksProxyUriEndpoint is required for an EXTERNAL_KEY_STORE key store",
            ));
        }
        _ => {}
    }
    let now = now_us();
    let mut state = sim.lock();
    let region_state = state.region_mut(account, region);
    if region_state.key_stores.iter().any(|s| s.name == name) {
        return Err(ApiError::bad(
            "CustomKeyStoreNameInUseException",
            format!("Custom key store name {name} is already in use"),
        ));
    }
    if let Some(cluster) = cluster
        && region_state
            .key_stores
            .iter()
            .any(|s| s.cloud_hsm_cluster_id.as_deref() == Some(cluster))
    {
        return Err(ApiError::bad(
            "CloudHsmClusterInUseException",
            format!("CloudHSM cluster {cluster} is already associated with a custom key store"),
        ));
    }
    let id = random_key_store_id();
    let mut store = StoreState::new(
        id.clone(),
        name.to_owned(),
        store_type,
        us_to_secs(now),
        Transition {
            at_us: now,
            state: ConnectionState::Disconnected,
            error_code: None,
        },
    );
    store.cloud_hsm_cluster_id = cluster.map(str::to_owned);
    store.xks_proxy_uri_endpoint = endpoint.map(str::to_owned);
    region_state.key_stores.push(store);
    Ok(Value::Map(vec![("CustomKeyStoreId", Value::str(id))]))
}

impl Sim {
    /// Add a custom key store while the simulator runs (as if someone created and connected one
    /// outside the kill switch). `decl.id` empty = a fresh random id. The id must be unused in the
    /// whole simulator and the name in its account and region.
    pub(crate) fn add_key_store(
        &self,
        account: &str,
        region: &str,
        decl: &KeyStoreDecl,
    ) -> Result<StoreView, SimError> {
        let refused = |id: &str, reason: String| SimError::KeyStoreRefused {
            account: account.to_owned(),
            region: region.to_owned(),
            custom_key_store_id: id.to_owned(),
            reason,
        };
        let id = if decl.id.is_empty() {
            random_key_store_id()
        } else {
            decl.id.clone()
        };
        if !is_key_store_id(&id) {
            return Err(refused(
                &id,
                "the id is not cks- followed by 17 hex digits".into(),
            ));
        }
        if !is_account_id(account) {
            return Err(refused(
                &id,
                format!("account {account:?} is not 12 digits"),
            ));
        }
        let now = now_us();
        let mut state = self.lock();
        if state
            .regions
            .values()
            .any(|r| r.key_stores.iter().any(|s| s.id == id))
        {
            return Err(refused(&id, "the id is already in use".into()));
        }
        let region_state = state.region_mut(account, region);
        if region_state.key_stores.iter().any(|s| s.name == decl.name) {
            return Err(refused(
                &id,
                format!("the name {} is already in use", decl.name),
            ));
        }
        let mut store = StoreState::new(
            id,
            decl.name.clone(),
            decl.store_type,
            decl.creation_date.unwrap_or(us_to_secs(now)),
            Transition {
                at_us: now,
                state: decl.connection_state,
                error_code: decl.connection_error_code.clone(),
            },
        );
        store.cloud_hsm_cluster_id = decl.cloud_hsm_cluster_id.clone();
        store.xks_proxy_uri_endpoint = decl.xks_proxy_uri_endpoint.clone();
        let view = store.view(now);
        region_state.key_stores.push(store);
        Ok(view)
    }
}
