//! STS in awsQuery: AssumeRole (temporary credentials tied to the role's account, allowed only
//! to the principals the world names) and GetCallerIdentity. Writes the XML bodies; never sees
//! HTTP or signatures.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::protocol::{ApiError, Common, Protocol, STS_NAMESPACE, xml_escape};
use crate::state::{Identity, Sim};

/// AssumeRole DurationSeconds bounds (AWS: 15 minutes to 12 hours).
const MIN_SESSION: Duration = Duration::from_secs(900);
const MAX_SESSION: Duration = Duration::from_secs(43_200);

pub(crate) fn handle(
    sim: &Sim,
    caller: &Identity,
    operation: &str,
    params: &HashMap<String, String>,
    request_id: &str,
) -> Result<String, ApiError> {
    let body = match operation {
        "AssumeRole" => assume_role(sim, caller, params)?,
        "GetCallerIdentity" => format!(
            "<GetCallerIdentityResult><Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account></GetCallerIdentityResult>",
            xml_escape(&caller.arn),
            xml_escape(&caller.user_id),
            xml_escape(&caller.account)
        ),
        other => {
            return Err(Common::UnknownOperation.error(
                Protocol::StsQuery,
                format!("Could not find operation {other} for version 2011-06-15"),
            ));
        }
    };
    Ok(format!(
        "<{operation}Response xmlns=\"{STS_NAMESPACE}\">{body}<ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{operation}Response>",
        xml_escape(request_id)
    ))
}

fn validation(message: String) -> ApiError {
    ApiError::bad("ValidationError", message)
}

fn assume_role(
    sim: &Sim,
    caller: &Identity,
    params: &HashMap<String, String>,
) -> Result<String, ApiError> {
    let role_arn = params
        .get("RoleArn")
        .ok_or_else(|| validation("1 validation error detected: Value null at 'roleArn' failed to satisfy constraint: Member must not be null".to_owned()))?;
    let session_name = params
        .get("RoleSessionName")
        .ok_or_else(|| validation("1 validation error detected: Value null at 'roleSessionName' failed to satisfy constraint: Member must not be null".to_owned()))?;
    let valid_name = (2..=64).contains(&session_name.len())
        && session_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c));
    if !valid_name {
        return Err(validation(format!(
            "1 validation error detected: Value '{session_name}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*"
        )));
    }
    let duration = match params.get("DurationSeconds") {
        None => Duration::from_secs(sim.world.settings.session_duration_seconds),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
            .filter(|d| (MIN_SESSION..=MAX_SESSION).contains(d))
            .ok_or_else(|| {
                validation(format!(
                    "1 validation error detected: Value '{text}' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200"
                ))
            })?,
    };
    let allowed = sim.world.roles.iter().any(|role| {
        &role.arn == role_arn
            && role
                .assumable_by
                .iter()
                .any(|who| *who == caller.access_key_id || Some(who) == caller.role_arn.as_ref())
    });
    if !allowed {
        return Err(Common::AccessDenied.error(
            Protocol::StsQuery,
            format!(
                "User: {} is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
                caller.arn
            ),
        ));
    }
    let issued = sim
        .issue_temporary(role_arn, session_name, duration)
        .ok_or_else(|| validation(format!("{role_arn} is not a valid role arn")))?;
    let expires = UNIX_EPOCH + Duration::from_micros(issued.expires_us.unwrap_or(0));
    let expiration = humantime::format_rfc3339_seconds(expires.max(SystemTime::UNIX_EPOCH));
    Ok(format!(
        "<AssumeRoleResult><AssumedRoleUser><AssumedRoleId>{}</AssumedRoleId><Arn>{}</Arn></AssumedRoleUser><Credentials><AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey><SessionToken>{}</SessionToken><Expiration>{expiration}</Expiration></Credentials></AssumeRoleResult>",
        xml_escape(&issued.user_id),
        xml_escape(&issued.arn),
        xml_escape(&issued.access_key_id),
        xml_escape(&issued.secret_access_key),
        xml_escape(issued.session_token.as_deref().unwrap_or_default()),
    ))
}
