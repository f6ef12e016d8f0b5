//! Standard KMS keys (key material in KMS, or in a custom key store): the key records with their
//! timestamped state history, and the operations DisableKey, EnableKey, DescribeKey and
//! ListAliases with KMS's key-id forms, key-state rules and error codes. Input arrives as JSON,
//! output leaves as a `Value`; this file never sees HTTP or signatures, and does not touch
//! custom key stores (`kms.rs`).

use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::faults::{Selector, chance};
use crate::input::Input;
use crate::protocol::ApiError;
use crate::state::{Sim, State, now_us, us_to_secs};
use crate::value::Value;
use crate::world::{KeyDecl, KeyManager, KeyState};

/// ListAliases: 1..=100 entries per page, 50 by default (the KMS limits).
const MAX_ALIASES: i64 = 100;
const DEFAULT_ALIASES: i64 = 50;
/// The waiting period a key in PendingDeletion reports when the world does not say (KMS default).
const DEFAULT_PENDING_WINDOW_DAYS: i64 = 30;
/// Past states are kept only for consistency-lag views; this many cover any lag a test uses.
const KEY_HISTORY: usize = 64;

/// A key as the simulator truly sees it now (no consistency lag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub key_id: String,
    pub arn: String,
    pub key_state: String,
    pub key_manager: String,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct KeyRecord {
    pub id: String,
    pub aliases: Vec<String>,
    pub manager: KeyManager,
    pub origin: String,
    pub multi_region: bool,
    pub custom_key_store_id: Option<String>,
    pub description: String,
    pub creation_date: f64,
    /// (from when, state), ordered by time; entries in the future are scheduled changes (an
    /// attacker's re-enable) that a later DisableKey does not cancel.
    history: Vec<(u64, KeyState)>,
}

impl KeyRecord {
    pub(crate) fn from_decl(decl: &KeyDecl, started_us: u64) -> KeyRecord {
        KeyRecord {
            id: decl.id.clone(),
            aliases: decl.aliases.clone(),
            manager: decl.key_manager,
            origin: decl.origin.clone(),
            multi_region: decl.multi_region,
            custom_key_store_id: decl.custom_key_store_id.clone(),
            description: decl.description.clone().unwrap_or_default(),
            creation_date: decl.creation_date.unwrap_or(us_to_secs(started_us)),
            history: vec![(0, decl.key_state)],
        }
    }

    /// The state in force at `at_us`.
    pub(crate) fn at(&self, at_us: u64) -> KeyState {
        self.history
            .iter()
            .rev()
            .find(|(from, _)| *from <= at_us)
            .or(self.history.first())
            .map_or(KeyState::Enabled, |(_, state)| *state)
    }

    /// From `at_us` on, the key is in `state` (until a later entry, if one is scheduled).
    pub(crate) fn set(&mut self, at_us: u64, state: KeyState) {
        let position = self.history.partition_point(|(from, _)| *from <= at_us);
        self.history.insert(position, (at_us, state));
        if self.history.len() > KEY_HISTORY {
            self.history.remove(0);
        }
    }

    pub(crate) fn arn(&self, account: &str, region: &str) -> String {
        format!("arn:aws:kms:{region}:{account}:key/{}", self.id)
    }

    pub(crate) fn view(&self, account: &str, region: &str, at_us: u64) -> KeyView {
        KeyView {
            key_id: self.id.clone(),
            arn: self.arn(account, region),
            key_state: self.at(at_us).as_str().to_owned(),
            key_manager: self.manager.as_str().to_owned(),
            aliases: self.aliases.clone(),
        }
    }
}

/// The records of a world's key declarations, as the simulator starts.
pub(crate) fn records(decls: &[KeyDecl], started_us: u64) -> Vec<KeyRecord> {
    decls
        .iter()
        .map(|decl| KeyRecord::from_decl(decl, started_us))
        .collect()
}

/// KMS's documented request quota (requests per second, per account and Region) of the key
/// operations whose quota is not the 5 rps the simulator applies by default (KMS Developer Guide,
/// "Request quotas", each calculated independently): DescribeKey 2000,
/// ListAliases 500. DisableKey and EnableKey have 5 each (separate quotas).
pub(crate) fn documented_rate(operation: &str) -> Option<f64> {
    match operation {
        "DescribeKey" => Some(2000.0),
        "ListAliases" => Some(500.0),
        _ => None,
    }
}

/// The key operations this module serves; `kms.rs` sends them here.
pub(crate) fn is_key_operation(operation: &str) -> bool {
    matches!(
        operation,
        "DisableKey" | "EnableKey" | "DescribeKey" | "ListAliases"
    )
}

pub(crate) fn handle(
    sim: &Sim,
    account: &str,
    region: &str,
    operation: &str,
    input: &Input<'_>,
) -> Result<Value, ApiError> {
    match operation {
        "DisableKey" => change_state(sim, account, region, input, "DisableKey"),
        "EnableKey" => change_state(sim, account, region, input, "EnableKey"),
        "DescribeKey" => describe_key(sim, account, region, input),
        _ => list_aliases(sim, account, region, input),
    }
}

fn not_found(message: String) -> ApiError {
    ApiError::bad("NotFoundException", message)
}

/// What a `KeyId` input names, before looking it up.
enum KeyRef<'a> {
    Id(&'a str),
    Alias(&'a str),
}

/// Parse a KeyId: key id, key ARN, alias name or alias ARN (`aliases_allowed` = DescribeKey).
/// An ARN of another account or region names nothing here: NotFoundException.
fn parse_key_ref<'a>(
    text: &'a str,
    account: &str,
    region: &str,
    aliases_allowed: bool,
) -> Result<KeyRef<'a>, ApiError> {
    let reference = if let Some(rest) = text.strip_prefix("arn:") {
        let parts: Vec<&'a str> = rest.splitn(5, ':').collect();
        let [partition, "kms", arn_region, arn_account, resource] = parts[..] else {
            return Err(ApiError::bad(
                "InvalidArnException",
                format!("ARN {text} is not a valid KMS key or alias ARN"),
            ));
        };
        if !partition.starts_with("aws") || !crate::world::is_account_id(arn_account) {
            return Err(ApiError::bad(
                "InvalidArnException",
                format!("ARN {text} is not a valid KMS key or alias ARN"),
            ));
        }
        if arn_account != account || arn_region != region {
            return Err(not_found(format!("Key '{text}' does not exist")));
        }
        if let Some(id) = resource.strip_prefix("key/") {
            KeyRef::Id(id)
        } else if resource.starts_with("alias/") {
            KeyRef::Alias(resource)
        } else {
            return Err(ApiError::bad(
                "InvalidArnException",
                format!("ARN {text} is not a valid KMS key or alias ARN"),
            ));
        }
    } else if text.starts_with("alias/") {
        KeyRef::Alias(text)
    } else {
        KeyRef::Id(text)
    };
    if matches!(reference, KeyRef::Alias(_)) && !aliases_allowed {
        return Err(not_found(format!("Invalid keyId {text}")));
    }
    Ok(reference)
}

/// Find the key a KeyId names in the caller's account and region.
fn find_key<'s>(
    state: &'s mut State,
    account: &str,
    region: &str,
    key_id: &str,
    aliases_allowed: bool,
) -> Result<&'s mut KeyRecord, ApiError> {
    let reference = parse_key_ref(key_id, account, region, aliases_allowed)?;
    let keys = &mut state.region_mut(account, region).keys;
    match reference {
        KeyRef::Id(id) => keys.iter_mut().find(|k| k.id == id).ok_or_else(|| {
            not_found(format!(
                "Key 'arn:aws:kms:{region}:{account}:key/{id}' does not exist"
            ))
        }),
        KeyRef::Alias(alias) => keys
            .iter_mut()
            .find(|k| k.aliases.iter().any(|a| a == alias))
            .ok_or_else(|| {
                not_found(format!(
                    "Alias arn:aws:kms:{region}:{account}:{alias} is not found."
                ))
            }),
    }
}

/// Fault rules that name this key (`key_id`), and `dependency_timeout_rate` of any rule that
/// selects the request: the effects the server cannot apply before the key is resolved.
fn key_faults(
    state: &State,
    account: &str,
    region: &str,
    operation: &str,
    key_id: &str,
) -> Result<(), ApiError> {
    let selector = Selector {
        account: Some(account),
        region: Some(region),
        operation,
        custom_key_store_id: None,
        key_id: Some(key_id),
    };
    for rule in state.faults.matching(&selector) {
        if chance(rule.dependency_timeout_rate) {
            return Err(ApiError::new(
                500,
                "DependencyTimeoutException",
                "The system timed out while trying to fulfill the request. The request can be retried.",
            ));
        }
        if rule.key_id.is_none() {
            continue;
        }
        if rule.access_denied {
            return Err(ApiError::bad(
                "AccessDeniedException",
                format!(
                    "User in account {account} is not authorized to perform: kms:{operation} on resource: arn:aws:kms:{region}:{account}:key/{key_id} because of an injected fault"
                ),
            ));
        }
        if chance(rule.internal_error_rate) {
            return Err(ApiError::new(
                500,
                "KMSInternalException",
                "injected internal error",
            ));
        }
    }
    Ok(())
}

/// DisableKey / EnableKey: key id or key ARN only; AWS-managed keys refused; the key-state table.
fn change_state(
    sim: &Sim,
    account: &str,
    region: &str,
    input: &Input<'_>,
    operation: &str,
) -> Result<Value, ApiError> {
    let key_id = input.req_str("KeyId")?;
    let now = now_us();
    let mut state = sim.lock();
    let id = find_key(&mut state, account, region, key_id, false)?
        .id
        .clone();
    key_faults(&state, account, region, operation, &id)?;
    let key = find_key(&mut state, account, region, &id, false)?;
    let arn = key.arn(account, region);
    if key.manager == KeyManager::Aws {
        return Err(ApiError::bad(
            "AccessDeniedException",
            format!(
                "User in account {account} is not authorized to perform: kms:{operation} on resource: {arn} because no resource-based policy allows the kms:{operation} action (an AWS managed key cannot be enabled or disabled)"
            ),
        ));
    }
    let current = key.at(now);
    let allowed = match operation {
        // Disabling is idempotent; keys in a custom key store may be disabled while unavailable.
        "DisableKey" => matches!(
            current,
            KeyState::Enabled
                | KeyState::Disabled
                | KeyState::PendingImport
                | KeyState::Unavailable
        ),
        _ => matches!(current, KeyState::Enabled | KeyState::Disabled),
    };
    if !allowed {
        let what = match current {
            KeyState::PendingDeletion => "pending deletion".to_owned(),
            other => format!("in state {}", other.as_str()),
        };
        return Err(ApiError::bad(
            "KMSInvalidStateException",
            format!("{arn} is {what}."),
        ));
    }
    let target = if operation == "DisableKey" {
        KeyState::Disabled
    } else {
        KeyState::Enabled
    };
    // A key that is unavailable (its store disconnected) stays so; its enabled flag is what
    // DisableKey changes, and the simulator does not model that flag apart from the state.
    if current != target && current != KeyState::Unavailable {
        key.set(now, target);
    }
    Ok(Value::Map(vec![]))
}

fn describe_key(
    sim: &Sim,
    account: &str,
    region: &str,
    input: &Input<'_>,
) -> Result<Value, ApiError> {
    let key_id = input.req_str("KeyId")?;
    let now = now_us();
    let settings_lag = sim.world.settings.consistency_lag_ms;
    let mut state = sim.lock();
    let id = find_key(&mut state, account, region, key_id, true)?
        .id
        .clone();
    key_faults(&state, account, region, "DescribeKey", &id)?;
    let selector = Selector {
        account: Some(account),
        region: Some(region),
        operation: "DescribeKey",
        custom_key_store_id: None,
        key_id: Some(&id),
    };
    let lag_ms = state
        .faults
        .matching(&selector)
        .find_map(|rule| rule.consistency_lag_ms)
        .unwrap_or(settings_lag);
    let key = find_key(&mut state, account, region, &id, false)?;
    let seen = key.at(now.saturating_sub(lag_ms.saturating_mul(1000)));
    Ok(Value::Map(vec![(
        "KeyMetadata",
        key_metadata(key, seen, account, region, now),
    )]))
}

fn key_metadata(key: &KeyRecord, seen: KeyState, account: &str, region: &str, now: u64) -> Value {
    let arn = key.arn(account, region);
    let mut fields = vec![
        ("AWSAccountId", Value::str(account)),
        ("KeyId", Value::str(key.id.clone())),
        ("Arn", Value::str(arn.clone())),
        ("CreationDate", Value::Time(key.creation_date)),
        ("Enabled", Value::Bool(seen == KeyState::Enabled)),
        ("Description", Value::str(key.description.clone())),
        ("KeyUsage", Value::str("ENCRYPT_DECRYPT")),
        ("KeyState", Value::str(seen.as_str())),
    ];
    if seen == KeyState::PendingDeletion {
        let window_s = DEFAULT_PENDING_WINDOW_DAYS * 86_400;
        fields.push((
            "DeletionDate",
            Value::Time(us_to_secs(now) + window_s as f64),
        ));
        fields.push((
            "PendingDeletionWindowInDays",
            Value::Int(DEFAULT_PENDING_WINDOW_DAYS),
        ));
    }
    fields.extend([
        ("Origin", Value::str(key.origin.clone())),
        ("KeyManager", Value::str(key.manager.as_str())),
        ("CustomerMasterKeySpec", Value::str("SYMMETRIC_DEFAULT")),
        ("KeySpec", Value::str("SYMMETRIC_DEFAULT")),
        (
            "EncryptionAlgorithms",
            Value::List(vec![Value::str("SYMMETRIC_DEFAULT")]),
        ),
        ("MultiRegion", Value::Bool(key.multi_region)),
    ]);
    if key.multi_region {
        fields.push((
            "MultiRegionConfiguration",
            Value::Map(vec![
                ("MultiRegionKeyType", Value::str("PRIMARY")),
                (
                    "PrimaryKey",
                    Value::Map(vec![
                        ("Arn", Value::str(arn)),
                        ("Region", Value::str(region)),
                    ]),
                ),
                ("ReplicaKeys", Value::List(vec![])),
            ]),
        ));
    }
    if let Some(store) = &key.custom_key_store_id {
        fields.push(("CustomKeyStoreId", Value::str(store.clone())));
    }
    Value::Map(fields)
}

fn list_aliases(
    sim: &Sim,
    account: &str,
    region: &str,
    input: &Input<'_>,
) -> Result<Value, ApiError> {
    let limit = match input.opt_int("Limit")? {
        None => DEFAULT_ALIASES,
        Some(n) if (1..=MAX_ALIASES).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::bad(
                "ValidationException",
                format!(
                    "1 validation error detected: Value '{n}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 100"
                ),
            ));
        }
    } as usize;
    let key_filter = input.opt_str("KeyId")?;
    let marker = input.opt_str("Marker")?;
    let mut state = sim.lock();
    let only = match key_filter {
        None => None,
        Some(key_id) => {
            if key_id.starts_with("alias/") || key_id.contains(":alias/") {
                return Err(ApiError::bad(
                    "InvalidArnException",
                    format!("KeyId {key_id} must be a key id or key ARN"),
                ));
            }
            Some(
                find_key(&mut state, account, region, key_id, false)?
                    .id
                    .clone(),
            )
        }
    };
    let keys = state
        .region(account, region)
        .map(|r| r.keys.as_slice())
        .unwrap_or_default();
    let mut aliases: Vec<(&str, &KeyRecord)> = keys
        .iter()
        .filter(|k| only.as_ref().is_none_or(|id| &k.id == id))
        .flat_map(|k| k.aliases.iter().map(move |a| (a.as_str(), k)))
        .collect();
    aliases.sort_by(|a, b| a.0.cmp(b.0));
    let start = match marker {
        None => 0,
        Some(marker) => hex::decode(marker)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|name| aliases.iter().position(|(a, _)| *a == name))
            .ok_or_else(|| ApiError::bad("InvalidMarkerException", "The marker is not valid"))?,
    };
    let end = (start + limit).min(aliases.len());
    let entries = aliases[start..end]
        .iter()
        .map(|(alias, key)| {
            Value::Map(vec![
                ("AliasName", Value::str(*alias)),
                (
                    "AliasArn",
                    Value::str(format!("arn:aws:kms:{region}:{account}:{alias}")),
                ),
                ("TargetKeyId", Value::str(key.id.clone())),
                ("CreationDate", Value::Time(key.creation_date)),
                ("LastUpdatedDate", Value::Time(key.creation_date)),
            ])
        })
        .collect();
    let mut output = vec![("Aliases", Value::List(entries))];
    let truncated = end < aliases.len();
    if truncated {
        output.push(("NextMarker", Value::str(hex::encode(aliases[end].0))));
    }
    output.push(("Truncated", Value::Bool(truncated)));
    Ok(Value::Map(output))
}

impl Sim {
    /// The standard keys of an account and region as they truly are now (no consistency lag).
    pub(crate) fn keys(&self, account: &str, region: &str) -> Vec<KeyView> {
        let now = now_us();
        self.lock()
            .region(account, region)
            .map(|r| {
                r.keys
                    .iter()
                    .map(|k| k.view(account, region, now))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Put a key in `key_state` (e.g. an attacker's EnableKey: "Enabled"), now or `after_ms`
    /// from now. Unlike DisableKey this bypasses every rule: AWS-managed keys included.
    /// A scheduled change is not cancelled by later calls; each takes effect at its time.
    pub(crate) fn set_key_state(
        &self,
        account: &str,
        region: &str,
        key_id: &str,
        key_state: &str,
        after_ms: u64,
    ) -> Result<(), SimError> {
        let wanted = KeyState::parse(key_state).ok_or_else(|| SimError::InvalidValue {
            field: "key state",
            value: key_state.to_owned(),
        })?;
        let at = now_us() + after_ms.saturating_mul(1000);
        let mut state = self.lock();
        let key = find_key(&mut state, account, region, key_id, true).map_err(|_| {
            SimError::KeyNotFound {
                account: account.to_owned(),
                region: region.to_owned(),
                key_id: key_id.to_owned(),
            }
        })?;
        key.set(at, wanted);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyRecord {
        KeyRecord::from_decl(
            &KeyDecl {
                id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
                aliases: vec![],
                key_manager: KeyManager::Customer,
                key_state: KeyState::Enabled,
                origin: "AWS_KMS".into(),
                multi_region: false,
                custom_key_store_id: None,
                description: None,
                creation_date: None,
            },
            0,
        )
    }

    #[test]
    fn a_scheduled_state_survives_an_earlier_change() {
        let mut k = key();
        k.set(500, KeyState::Enabled);
        k.set(100, KeyState::Disabled);
        assert_eq!(k.at(99), KeyState::Enabled);
        assert_eq!(k.at(200), KeyState::Disabled);
        assert_eq!(k.at(500), KeyState::Enabled);
    }

    #[test]
    fn key_references_take_every_kms_form() {
        let (a, r) = ("111111111111", "eu-west-1");
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        assert!(matches!(parse_key_ref(id, a, r, false), Ok(KeyRef::Id(x)) if x == id));
        let arn = format!("arn:aws:kms:{r}:{a}:key/{id}");
        assert!(matches!(parse_key_ref(&arn, a, r, false), Ok(KeyRef::Id(x)) if x == id));
        let alias_arn = format!("arn:aws:kms:{r}:{a}:alias/x");
        assert!(matches!(
            parse_key_ref(&alias_arn, a, r, true),
            Ok(KeyRef::Alias("alias/x"))
        ));
        let refused = parse_key_ref("alias/x", a, r, false).err().map(|e| e.code);
        assert_eq!(refused.as_deref(), Some("NotFoundException"));
        let bad = parse_key_ref("arn:aws:kms:nope", a, r, true)
            .err()
            .map(|e| e.code);
        assert_eq!(bad.as_deref(), Some("InvalidArnException"));
        let elsewhere = format!("arn:aws:kms:us-east-1:{a}:key/{id}");
        let other = parse_key_ref(&elsewhere, a, r, true).err().map(|e| e.code);
        assert_eq!(other.as_deref(), Some("NotFoundException"));
    }
}
